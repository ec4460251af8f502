"""Child of bench/gpu/remote_pytorch.py: ResNet-50 and BERT-base inference on ``cuda:0``, whatever
libcuda the process got (native, or the remoting client). Weights come from a fixed seed on the CPU
(no download), inputs too, so native and remote runs compute the same thing. Prints one JSON line
with median step times; saves the outputs for the comparison."""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def timed(fn, warmup: int, iters: int) -> float:  # type: ignore[no-untyped-def]
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--dtype", default="float16")
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    import torchvision
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    resnet = torchvision.models.resnet50(weights=None).eval().to("cuda", dtype)
    torch.manual_seed(1)
    bert = BertModel(BertConfig()).eval().to("cuda", dtype)
    outputs = {}
    medians = {}
    with torch.no_grad():
        for bs in (1, 32):
            g = torch.Generator().manual_seed(100 + bs)
            image = torch.randn(bs, 3, 224, 224, generator=g).to("cuda", dtype)
            tokens = torch.randint(0, 30522, (bs, 128), generator=g).to("cuda")
            medians[f"resnet50_bs{bs}"] = timed(lambda: resnet(image), args.warmup, args.iters)  # noqa: B023
            medians[f"bert_base_seq128_bs{bs}"] = timed(lambda: bert(tokens), args.warmup, args.iters)  # noqa: B023
            outputs[f"resnet50_bs{bs}"] = resnet(image).float().cpu()
            outputs[f"bert_base_seq128_bs{bs}"] = bert(tokens).last_hidden_state.float().cpu()
    torch.save(outputs, args.out)
    free, total = torch.cuda.mem_get_info()
    print(json.dumps({"median_ms": medians, "device": torch.cuda.get_device_name(0), "mem_total": total,
                      "mem_free": free}))


if __name__ == "__main__":
    main()
