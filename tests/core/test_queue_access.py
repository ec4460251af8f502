"""Which queue a pod runs in is the cluster owner's decision: one pure function, shared by the
admission webhook and the scheduler."""

from __future__ import annotations

from xpupool.core.queue_access import (
    DEFAULT_QUEUE,
    LabelRequirement,
    LabelSelector,
    QueueAccess,
    QueueEntry,
    entries,
    resolve_queue,
)
from xpupool.core.status import Code

VISION = LabelSelector((("team", "vision"),))
QUEUES = entries([
    ("research", "", QueueAccess()),  # inner: never named by pods
    ("vision", "research", QueueAccess(selector=VISION, default_for_namespaces=True)),
    ("nlp", "research", QueueAccess(namespaces=frozenset({"nlp", "shared"}), default_for_namespaces=True)),
    ("batch", "", QueueAccess(namespaces=frozenset({"shared", "nlp"}))),
])


def resolve(namespace: str, requested: str | None, labels: dict[str, str] | None = None,
            queues: dict[str, QueueEntry] = QUEUES):  # type: ignore[no-untyped-def]
    return resolve_queue(namespace=namespace, namespace_labels=labels or {}, requested=requested, queues=queues)


def test_a_listed_namespace_may_use_the_queue() -> None:
    choice = resolve("nlp", "batch")
    assert choice.status.ok and choice.queue == "batch" and not choice.defaulted


def test_a_namespace_not_admitted_is_refused_with_what_it_may_use() -> None:
    choice = resolve("mallory", "nlp")
    assert choice.queue is None and choice.status.code is Code.UNSCHEDULABLE_AND_UNRESOLVABLE
    text = choice.status.message()
    assert "namespace mallory may not use queue 'nlp'" in text and "namespaces nlp, shared" in text
    assert "queues namespace mallory may use: default" in text


def test_a_namespace_selector_matches_namespace_labels_and_names() -> None:
    assert resolve("cv", "vision", {"team": "vision"}).queue == "vision"
    assert resolve("cv", "vision", {"team": "nlp"}).queue is None
    by_name = entries([("q", "", QueueAccess(selector=LabelSelector(requirements=(
        LabelRequirement("kubernetes.io/metadata.name", "In", frozenset({"a", "b"})),))))])
    assert resolve("a", "q", queues=by_name).queue == "q" and resolve("c", "q", queues=by_name).queue is None


def test_selector_operators() -> None:
    labels = {"tier": "gold"}
    assert LabelRequirement("tier", "In", frozenset({"gold"})).matches(labels)
    assert not LabelRequirement("tier", "NotIn", frozenset({"gold"})).matches(labels)
    assert LabelRequirement("env", "NotIn", frozenset({"prod"})).matches(labels)
    assert LabelRequirement("tier", "Exists").matches(labels)
    assert LabelRequirement("env", "DoesNotExist").matches(labels)


def test_pods_cannot_name_an_inner_queue_or_an_unknown_one() -> None:
    assert "has child queues (nlp, vision)" in resolve("nlp", "research").status.message()
    assert "queue 'ghost' does not exist" in resolve("nlp", "ghost").status.message()


def test_no_label_gets_the_namespace_default_queue() -> None:
    choice = resolve("cv", None, {"team": "vision"})
    assert choice.queue == "vision" and choice.defaulted


def test_two_default_queues_for_one_namespace_are_a_conflict_the_pod_is_told_about() -> None:
    conflicting = entries([("a", "", QueueAccess(namespaces=frozenset({"ns"}), default_for_namespaces=True)),
                           ("b", "", QueueAccess(namespaces=frozenset({"ns"}), default_for_namespaces=True))])
    choice = resolve("ns", "", queues=conflicting)
    assert choice.queue is None and "several default queues (a, b)" in choice.status.message()
    assert resolve("ns", "b", queues=conflicting).queue == "b"


def test_without_a_default_the_implicit_default_queue_is_open() -> None:
    choice = resolve("batchers", None)
    assert choice.queue == DEFAULT_QUEUE and choice.defaulted


def test_declaring_default_closes_it() -> None:
    closed = entries([("default", "", QueueAccess(namespaces=frozenset({"ops"})))])
    assert resolve("ops", None, queues=closed).queue == DEFAULT_QUEUE
    refused = resolve("dev", None, queues=closed)
    assert refused.queue is None and "no default queue for namespace dev" in refused.status.message()


def test_not_enforced_accepts_any_label() -> None:
    choice = resolve_queue(namespace="x", namespace_labels={}, requested="anything", queues={}, enforced=False)
    assert choice.queue == "anything"
