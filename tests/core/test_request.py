"""The one request syntax: what users write, what the pool understands, and the messages they see."""

from hypothesis import given
from hypothesis import strategies as st

from xpupool.core.model import Device, Node, RemotePolicy, Vendor
from xpupool.core.request import parse_quantity, parse_request, validate_against_pool


def test_fractional_request_defaults_memory_to_the_compute_share() -> None:
    result = parse_request(name="p", resources={"xpupool.io/vxpu": "1", "xpupool.io/vxpu-core": "30"})
    assert result.ok and result.request is not None
    assert result.request.share_milli == 300
    assert result.request.device_memory_pct == 30
    assert result.request.is_sharing


def test_whole_card_form_is_the_same_request_with_share_100() -> None:
    result = parse_request(name="p", resources={"nvidia.com/gpu": "2"})
    assert result.request is not None
    r = result.request
    assert (r.count, r.share_milli, r.exclusive, r.vendor) == (2, 1000, True, Vendor.NVIDIA)


def test_ascend_whole_card_implies_model() -> None:
    result = parse_request(name="p", resources={"huawei.com/Ascend910B": 8})
    assert result.request is not None and result.request.models == ("Ascend910B",)


def test_annotations_set_vendor_models_remote_queue_and_gang() -> None:
    result = parse_request(
        name="p",
        resources={"xpupool.io/vxpu": "1", "xpupool.io/vxpu-core": "25", "xpupool.io/vxpu-memory": "4Gi"},
        annotations={"xpupool.io/vendor": "nvidia", "xpupool.io/model": "H100, A100", "xpupool.io/remote": "allowed"},
        labels={"xpupool.io/queue": "team-a", "xpupool.io/pod-group": "job-1"},
        priority=5,
    )
    assert result.ok, result.errors
    r = result.request
    assert r is not None
    assert r.models == ("H100", "A100") and r.remote is RemotePolicy.ALLOWED
    assert (r.queue, r.pod_group, r.priority) == ("team-a", "job-1", 5)
    assert r.device_memory_mib == 4096  # a unit means bytes: 4Gi -> 4096 MiB; a plain number is MiB


def test_bad_input_gets_every_problem_explained() -> None:
    result = parse_request(
        name="p",
        resources={"xpupool.io/vxpu": "1", "xpupool.io/vxpu-core": "0", "xpupool.io/vxpu-memory": "-5"},
        annotations={"xpupool.io/vendor": "intel", "xpupool.io/remote": "sometimes"},
    )
    assert not result.ok and result.request is None
    text = " | ".join(result.errors)
    assert "compute share is 1..100" in text
    assert "must be positive" in text
    assert "unknown vendor 'intel'" in text
    assert "expected one of never, allowed, preferred, required" in text


def test_share_above_100_and_fraction_on_many_cards_are_refused() -> None:
    assert "got 150" in parse_request(name="p", resources={"xpupool.io/vxpu": 1, "xpupool.io/vxpu-core": 150}).errors[0]
    errors = parse_request(name="p", resources={"xpupool.io/vxpu": 2, "xpupool.io/vxpu-core": 50}).errors
    assert any("ask for 1 card or 100% each" in e for e in errors)


def test_mixing_whole_card_and_vxpu_resources_is_refused() -> None:
    errors = parse_request(name="p", resources={"nvidia.com/gpu": 1, "xpupool.io/vxpu": 1}).errors
    assert any("cannot be mixed" in e for e in errors)


def _pool() -> list[Node]:
    h100 = tuple(Device(i, Vendor.NVIDIA, "H100", 81920) for i in range(8))
    return [Node("a", 64000, 262144, h100), Node("cpu", 32000, 65536)]


def test_pool_validation_catches_impossible_requests() -> None:
    too_many = parse_request(name="p", resources={"xpupool.io/vxpu": 9}).request
    assert too_many is not None
    assert "largest node has 8 matching cards" in validate_against_pool(too_many, _pool())[0]
    ascend = parse_request(name="p", resources={"huawei.com/Ascend910B": 1}).request
    assert ascend is not None
    assert "no card of ascend model Ascend910B" in validate_against_pool(ascend, _pool())[0]
    big = parse_request(name="p", resources={"xpupool.io/vxpu": 1, "xpupool.io/vxpu-memory": 100_000}).request
    assert big is not None
    assert "largest matching card has 81920 MiB" in validate_against_pool(big, _pool())[0]


def test_quantities() -> None:
    assert parse_quantity("500m") == 0.5
    assert parse_quantity("2Gi") == 2 * 2**30
    assert parse_quantity("3k") == 3000


_values = st.one_of(st.integers(-10**6, 10**6).map(str), st.text(max_size=8), st.integers(-5, 300))


@given(
    resources=st.dictionaries(
        st.sampled_from(["xpupool.io/vxpu", "xpupool.io/vxpu-core", "xpupool.io/vxpu-memory",
                         "xpupool.io/vxpu-memory-percent", "nvidia.com/gpu", "xpupool.io/bogus"]),
        _values, max_size=4),
    annotations=st.dictionaries(
        st.sampled_from(["xpupool.io/vendor", "xpupool.io/remote", "xpupool.io/exclusive", "xpupool.io/model"]),
        st.text(max_size=10), max_size=3),
)
def test_parser_never_raises_and_accepted_requests_are_in_range(resources: dict[str, object],
                                                                annotations: dict[str, str]) -> None:
    result = parse_request(name="p", resources=resources, annotations=annotations)  # type: ignore[arg-type]
    if result.request is None:
        assert result.errors, "a refused request always says why"
        return
    r = result.request
    assert r.count >= 0
    if r.count:
        assert 10 <= r.share_milli <= 1000 and r.share_milli % 10 == 0
        assert r.device_memory_mib >= 0 and 0 <= r.device_memory_pct <= 100
        assert r.count == 1 or r.share_milli == 1000


@given(share=st.integers(1, 100), count=st.integers(1, 8))
def test_valid_requests_round_trip(share: int, count: int) -> None:
    if count > 1:
        share = 100
    result = parse_request(name="p", resources={"xpupool.io/vxpu": count, "xpupool.io/vxpu-core": share})
    assert result.request is not None
    assert result.request.share_milli == share * 10 and result.request.count == count
