"""Build a :class:`~xpupool.view.model.PoolSnapshot` from apiserver objects and agent usage (pure).

Inputs are exactly what the apiserver holds (Nodes, Pods, XPUQueues as JSON dicts) plus the
agents' parsed metrics; the clock is a parameter. The same translation functions as the scheduler
are used (:mod:`xpupool.kube.objects`, :mod:`xpupool.kube.queues`), so the view shows what the
scheduler accounts:

* a bound pod with an ``xpupool.io/allocation`` naming its node is a slice on each of its cards
  (on ``deviceNode`` for a remote vXPU, which is also listed as a remote session);
* a bound pod holding cards without our allocation (kube-scheduler's ``nvidia.com/gpu`` pods) is
  an :class:`~xpupool.view.model.OtherPod` of its node: the kubelet chose its cards, so the view
  does not pretend to know which;
* a pod of ours without a node is pending; its reason is the scheduler's ``PodScheduled=False``
  condition message (what ``kubectl describe`` shows), or "not tried yet";
* a declared queue (an ``XPUQueue``) shows what the scheduler wrote in its ``status`` (the one
  place queue usage is computed: ``kube/scheduler/queue_status.py``): the ``xpupool.io/vxpu-core``
  row without a card model, in cards; a queue without status yet is shown as not reported. The
  implicit ``default`` queue has no object: its used cards are the sum of its running pods' cards,
  all borrowed (it is guaranteed nothing).
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace

from xpupool.core.constraints import Effect
from xpupool.core.model import WHOLE_CARD_MILLI, Node, Request
from xpupool.kube.objects import (
    ANN_INVENTORY,
    SCHEDULER_NAME,
    decode_allocation,
    node_model,
    node_utilization,
    pod_is_terminal,
    pod_key,
    pod_request,
)
from xpupool.kube.queues import queue_spec
from xpupool.kube.transport import JsonDict
from xpupool.view.model import (
    Amounts,
    CardView,
    Limits,
    NodeView,
    OtherPod,
    PendingView,
    PoolSnapshot,
    QueueView,
    RemoteView,
    SliceView,
    Totals,
)
from xpupool.view.usage import CardUsage, NodeUsage, SliceUsage

NOT_TRIED = "not tried by the scheduler yet"


def parse_time(text: str | None) -> dt.datetime | None:
    """An RFC 3339 timestamp as the apiserver writes it, or None."""
    if not text:
        return None
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def describe_request(request: Request) -> str:
    """Short text of a request, e.g. ``1×30% 8192MiB``, ``2× whole``, ``cpu only``."""
    if request.count == 0:
        return "cpu only"
    if request.takes_whole_cards:
        text = f"{request.count}× whole"
    else:
        text = f"{request.count}×{request.share_milli / 10:g}%"
        if request.device_memory_mib:
            text += f" {request.device_memory_mib}MiB"
        elif request.device_memory_pct:
            text += f" mem {request.device_memory_pct}%"
    if request.models:
        text += f" {'|'.join(request.models)}"
    elif request.vendor is not None:
        text += f" {request.vendor.value}"
    if request.remote.value != "never":
        text += f" remote:{request.remote.value}"
    return text


def _card_uuids(node: JsonDict) -> dict[int, str]:
    raw = ((node.get("metadata") or {}).get("annotations") or {}).get(ANN_INVENTORY)
    if not raw:
        return {}
    try:
        doc = json.loads(raw)
        return {int(d["index"]): str(d.get("uuid", "")) for d in doc.get("devices") or []}
    except (ValueError, KeyError, TypeError, AttributeError):
        return {}


def _schedulable(node: Node) -> bool:
    """Not cordoned and no NoSchedule/NoExecute taint (Ready=False adds one)."""
    return not node.unschedulable and not any(
        t.effect in (Effect.NO_SCHEDULE, Effect.NO_EXECUTE) for t in node.taints)


def _percent_cards(raw: object) -> float:
    """A ``vxpu-core`` status figure (percent of a card, int or text) in cards."""
    try:
        return float(str(raw)) / 100
    except ValueError:
        return 0.0


def _pending_reason(pod: JsonDict) -> str:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            return str(cond.get("message") or cond.get("reason") or "unschedulable")
    return NOT_TRIED


def build_snapshot(
    *,
    nodes: Iterable[JsonDict],
    pods: Iterable[JsonDict],
    queues: Iterable[JsonDict] = (),
    usage: Mapping[str, NodeUsage | None] | None = None,
    now: dt.datetime,
    scheduler_name: str = SCHEDULER_NAME,
    warnings: Sequence[str] = (),
) -> PoolSnapshot:
    """The pool as the apiserver and the agents describe it at ``now`` (see the module docstring).

    ``usage`` maps node name -> the agent's parsed metrics, ``None`` for an agent that was asked
    and did not answer; nodes absent from it were not asked.
    """
    usage = usage or {}
    problems = list(warnings)
    node_objs = sorted(nodes, key=lambda n: str(n["metadata"]["name"]))
    node_names = {str(n["metadata"]["name"]) for n in node_objs}
    slices: dict[tuple[str, int], list[SliceView]] = defaultdict(list)
    others: dict[str, list[OtherPod]] = defaultdict(list)
    cpu_requested: dict[str, int] = defaultdict(int)
    pending: list[PendingView] = []
    remote: list[RemoteView] = []
    running_cards: dict[str, float] = defaultdict(float)
    running_count: dict[str, int] = defaultdict(int)

    for pod in pods:
        if pod_is_terminal(pod):
            continue
        key = pod_key(pod)
        meta = pod.get("metadata") or {}
        namespace, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
        spec = pod.get("spec") or {}
        parsed = pod_request(pod)
        request = parsed.request
        node = str(spec.get("nodeName") or "")
        ours = spec.get("schedulerName") == scheduler_name
        if not node:
            if not ours or meta.get("deletionTimestamp"):
                continue
            created = parse_time(meta.get("creationTimestamp"))
            waiting = max(0.0, (now - created).total_seconds()) if created else 0.0
            if request is None:
                text, reason, queue = "invalid", "invalid accelerator request: " + "; ".join(parsed.errors), "default"
            else:
                text, reason, queue = describe_request(request), _pending_reason(pod), request.queue
            pending.append(
                PendingView(
                    namespace=namespace,
                    pod=name,
                    queue=queue,
                    request=text,
                    reason=reason,
                    waiting_s=round(waiting, 1),
                    priority=int(spec.get("priority") or 0),
                    pod_group=request.pod_group if request is not None else "",
                )
            )
            continue
        if request is None:
            continue
        cpu_requested[node] += request.cpu_milli
        allocation = decode_allocation(pod)
        if allocation is not None and allocation.node == node and ours:
            running_cards[request.queue] += request.gpu_milli_total / WHOLE_CARD_MILLI
            running_count[request.queue] += 1
            if allocation.device_node not in node_names:
                problems.append(f"{key}: its cards are on {allocation.device_node}, which is not a node here")
            remote_from = node if allocation.is_remote else None
            for card, memory in zip(allocation.cards, allocation.device_memory_mib, strict=False):
                slices[(allocation.device_node, card)].append(
                    SliceView(
                        namespace=namespace,
                        pod=name,
                        queue=request.queue,
                        share_pct=allocation.share_milli / 10,
                        memory_mib=memory,
                        phase=str((pod.get("status") or {}).get("phase") or "Pending"),
                        remote_from=remote_from,
                    )
                )
            if allocation.is_remote:
                remote.append(
                    RemoteView(
                        namespace=namespace,
                        pod=name,
                        client_node=node,
                        device_node=allocation.device_node,
                        cards=allocation.cards,
                        share_pct=allocation.share_milli / 10,
                        memory_mib=sum(allocation.device_memory_mib),
                        bandwidth_mbps=allocation.remote_mbps,
                    )
                )
        elif request.count > 0:
            others[node].append(OtherPod(namespace, name, request.count))

    node_views = [
        _node_view(obj, slices, others, cpu_requested, usage, problems) for obj in node_objs
    ]
    queue_views = _queue_views(queues, running_cards, running_count, pending, problems)
    remote = [_checked(r, {n.name: n for n in node_views}) for r in remote]
    cards = [c for n in node_views for c in n.cards]
    healthy = [c for c in cards if c.healthy]
    totals = Totals(
        nodes=len(node_views),
        cards=len(cards),
        healthy_cards=len(healthy),
        allocated_cards=round(sum(min(c.allocated_pct, 100.0) for c in cards) / 100, 3),
        free_cards=round(sum(c.free_pct for c in healthy) / 100, 3),
        idle_cards=sum(1 for c in healthy if not c.slices),
        slices=sum(len(c.slices) for c in cards),
        pending=len(pending),
        remote=len(remote),
    )
    pending.sort(key=lambda p: (-p.waiting_s, p.key))
    remote.sort(key=lambda r: (r.namespace, r.pod))
    return PoolSnapshot(
        taken_at=now.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        nodes=tuple(node_views),
        pending=tuple(pending),
        queues=tuple(queue_views),
        remote=tuple(remote),
        totals=totals,
        warnings=tuple(problems),
    )


def _node_view(
    obj: JsonDict,
    slices: Mapping[tuple[str, int], list[SliceView]],
    others: Mapping[str, list[OtherPod]],
    cpu_requested: Mapping[str, int],
    usage: Mapping[str, NodeUsage | None],
    problems: list[str],
) -> NodeView:
    model = node_model(obj)
    uuids = _card_uuids(obj)
    annotated = node_utilization(obj) or []
    live = usage.get(model.name)
    cards: list[CardView] = []
    for position, device in enumerate(model.devices):
        uuid = uuids.get(device.index, "")
        card_live = live.cards.get(uuid, CardUsage()) if live is not None else CardUsage()
        util = card_live.utilization_pct
        if util is None and position < len(annotated) and not math.isnan(annotated[position]):
            util = round(annotated[position] * 100, 1)  # the agent's last published sample
        card_slices = []
        for s in sorted(slices.get((model.name, device.index), ()), key=lambda s: s.key):
            slice_live = live.slices.get((s.namespace, s.pod, uuid)) if live is not None else None
            if slice_live is not None:
                s = _with_usage(s, slice_live)
            card_slices.append(s)
        cards.append(
            CardView(
                index=device.index,
                uuid=uuid,
                vendor=device.vendor.value,
                model=device.model,
                memory_mib=device.memory_mib,
                healthy=device.healthy,
                slices=tuple(card_slices),
                utilization_pct=util,
                memory_used_mib=card_live.memory_used_mib,
            )
        )
    known = {d.index for d in model.devices}
    for (node, card), on_card in slices.items():
        if node == model.name and card not in known:
            pods = ", ".join(s.key for s in on_card)
            problems.append(f"{pods}: allocated card {card} of {node}, which has no such card")
    return NodeView(
        name=model.name,
        schedulable=_schedulable(model),
        cards=tuple(cards),
        cpu_milli=model.cpu_milli,
        memory_mib=model.memory_mib,
        cpu_requested_milli=cpu_requested.get(model.name, 0),
        other_pods=tuple(sorted(others.get(model.name, ()), key=lambda o: (o.namespace, o.pod))),
        agent_reachable=None if model.name not in usage else live is not None,
        ready=_ready(obj),
    )


def _checked(session: RemoteView, nodes: Mapping[str, NodeView]) -> RemoteView:
    """The session with its ``problem`` set from the state of its card node."""
    device = nodes.get(session.device_node)
    problem = ""
    if device is None:
        problem = "device_node_missing"
    elif not device.ready:
        problem = "device_node_not_ready"
    elif any(c.index in session.cards and not c.healthy for c in device.cards):
        problem = "card_unhealthy"
    return replace(session, problem=problem) if problem else session


def _ready(node: JsonDict) -> bool:
    conditions = (node.get("status") or {}).get("conditions") or []
    return not any(c.get("type") == "Ready" and c.get("status") == "False" for c in conditions)


def _with_usage(s: SliceView, live: SliceUsage) -> SliceView:
    return replace(
        s,
        memory_used_mib=None if live.memory_used_mib is None else round(live.memory_used_mib, 1),
        utilization_pct=None if live.utilization_pct is None else round(live.utilization_pct, 1),
    )


def _queue_views(
    queues: Iterable[JsonDict],
    running_cards: Mapping[str, float],
    running_count: Mapping[str, int],
    pending: Sequence[PendingView],
    problems: list[str],
) -> list[QueueView]:
    waiting: dict[str, list[float]] = defaultdict(list)
    for p in pending:
        waiting[p.queue].append(p.waiting_s)
    views: dict[str, QueueView] = {}
    for obj in queues:
        spec, notes = queue_spec(obj)
        problems.extend(notes)
        status = obj.get("status") or {}
        row: JsonDict = next((r for r in status.get("resources") or []
                    if r.get("resource") == "xpupool.io/vxpu-core" and not r.get("model")), {})
        reported = "runningPods" in status
        if not reported:
            problems.append(f"queue {spec.name}: no status from the scheduler yet")
        views[spec.name] = QueueView(
            name=spec.name,
            weight=spec.weight,
            guarantee=Amounts(cards=_percent_cards(row.get("guaranteed", 0))),
            limit=Limits(cards=_percent_cards(row["limit"]) if "limit" in row else None),
            used=Amounts(cards=_percent_cards(row.get("allocated", 0))),
            borrowed=Amounts(cards=_percent_cards(row.get("borrowed", 0))),
            running=int(status.get("runningPods") or 0),
            pending=int(status.get("pendingPods") or 0),
            declared=True,
            oldest_pending_s=max(waiting.get(spec.name, []), default=0.0),
            reported=reported,
            parent=spec.parent,
        )
    for name in sorted({*running_count, *waiting} - set(views)):
        used = round(running_cards.get(name, 0.0), 3)
        views[name] = QueueView(
            name=name, weight=1.0, guarantee=Amounts(), limit=Limits(), used=Amounts(cards=used),
            borrowed=Amounts(cards=used), running=running_count.get(name, 0), pending=len(waiting.get(name, [])),
            declared=False, oldest_pending_s=max(waiting.get(name, []), default=0.0),
        )
    return [views[name] for name in sorted(views)]
