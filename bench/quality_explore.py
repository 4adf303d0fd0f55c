"""The exploration behind the quality preset (bench/QUALITY.md, "How the preset
was chosen"): settings run on bundled pairs, each scored along the run.

    python -m bench.quality_explore OUT.jsonl CONFIG[,CONFIG] PAIR[,PAIR] [SIZE]

Every config is the quality preset of commit 0fe670d2 (reciprocal weights 1.5 /
3 / 0.3, content conv4_2, style conv1_1..conv5_1 equal, Gram / (H·W), L-BFGS
from the content) with the keywords below on top; the `cm`/`ce` configs are
the classic recipe's objective in cpstyle (constant weights, weight_style =
K·1e3·Σ 1/C_l², layer weights 1/C_l² for `cm`, equal for `ce`) with a total
variation of t·1e-6 on the sum. The `q` configs (QCONFIGS) are the quality
preset of 2c9823b1 (preset="quality") with their keywords on top. Every
`_every` iterations the image is scored (bench/lpips.py) and one JSON line printed and appended to OUT: pair, config,
iteration, seconds (scoring excluded), losses, lpips, style_gap; the last
picture of each run goes beside OUT as OUT-PAIR-CONFIG.png. The records
of the 2026-11-29 exploration: results/quality-explore-cpu-256-2026-11-29.jsonl
(2-core VM, one or two runs at a time, so their seconds compare only roughly)."""
import json
import sys
import time

import cpstyle
from bench.lpips import AlexNet, Scorer
from bench.quality import PAIRS, load_pair
from cpstyle.backend import to_host
from cpstyle.vgg16 import VGG16

OLD_QUALITY = dict(content_layer_ids=(8,), style_layer_ids=(0, 2, 4, 7, 10),
                   weight_content=1.5, weight_style=3.0, weight_denoise=0.3,
                   num_iterations=150, gram_norm="hw", init="content", optimizer="lbfgs",
                   style_scale=1.0)
INV_C2 = [1 / c ** 2 for c in (64, 128, 256, 512, 512)]
K_TO_WEIGHT = 1e3 * sum(INV_C2)  # 0.32806: weight_style = K·K_TO_WEIGHT
CONFIGS = {
    "base200": dict(num_iterations=200),
    "avgpool": dict(num_iterations=200, pooling="avg"),
    "c48": dict(num_iterations=200, content_layer_ids=(4, 8)),
    "tv1": dict(num_iterations=200, weight_denoise=1.0),
    "tv1b": dict(num_iterations=200, weight_denoise=1.0, _every=25),
    "tv3": dict(num_iterations=200, weight_denoise=3.0, _every=25),
    "tv10": dict(num_iterations=200, weight_denoise=10.0, _every=25),
    "avg150": dict(num_iterations=150, pooling="avg", _every=25),
    "freeze75": "freeze",  # 75 reciprocal iterations, then 125 with the weights w/L frozen
    **{f"c{p}{k}": dict(num_iterations=200, pooling={"m": "max", "a": "avg"}[p],
                        constant_weights=True, weight_content=1.0,
                        weight_style=k * K_TO_WEIGHT, weight_denoise=0.0,
                        style_layer_weights=INV_C2, _every=25)
       for p in "ma" for k in (100, 300, 1000, 3000, 10000)},
    **{f"cm{k}t{t}": dict(num_iterations=150, pooling="max", constant_weights=True,
                          weight_content=1.0, weight_style=k * K_TO_WEIGHT,
                          weight_denoise=t * 1e-6, style_layer_weights=INV_C2, _every=25)
       for k in (300, 1000, 2000, 3000) for t in (1, 2, 3, 10, 30)},
    **{f"ce{k}t{t}": dict(num_iterations=150, pooling="max", constant_weights=True,
                          weight_content=1.0, weight_style=k * K_TO_WEIGHT,
                          weight_denoise=t * 1e-6, _every=25)
       for k in (300, 1000, 3000) for t in (0, 1, 3, 10, 30)},
}


# The quality preset of 2c9823b1 (constant weights) with these on top: the
# 2026-12-08 exploration (results/quality-explore-cpu-256-2026-12-08.jsonl).
QCONFIGS = {
    "q300": dict(num_iterations=300),
    "qms60": dict(multiscale=True, min_size=128, iterations_per_scale=60, _every=20),
    "qms100": dict(multiscale=True, min_size=128, iterations_per_scale=100, _every=25),
    "qlw1c": dict(style_layer_weights=(8.0, 4.0, 2.0, 1.0, 1.0)),
    "qavg": dict(pooling="avg"),
    "qh30": dict(lbfgs_history=30),
    # all 13 style layers, each weighted 1/C² (sum 1, as the preset's five)
    "q13": dict(style_layer_ids=tuple(range(13)),
                style_layer_weights=tuple(1 / c ** 2 for c in
                                          (64, 64, 128, 128, 256, 256, 256, 512, 512, 512,
                                           512, 512, 512))),
    # the preset's five plus conv1_2 and conv2_2 (the second conv of the first two blocks)
    "q7": dict(style_layer_ids=(0, 1, 2, 3, 4, 7, 10),
               style_layer_weights=tuple(1 / c ** 2 for c in (64, 64, 128, 128, 256, 512, 512))),
}


def main(argv):
    out, cfgs, pairs = argv[0], argv[1].split(","), argv[2].split(",")
    size = int(argv[3]) if len(argv) > 3 else 256
    model = VGG16.load(device="cpu")
    net = AlexNet.load()
    for c in pairs:
        content, style, _ = load_pair(c, dict(PAIRS)[c], size)
        scorer = Scorer(content, style, net)
        for name in cfgs:
            rows, t0, scoring = [], time.perf_counter(), [0.0]

            def cb(p, offset=0, every=50):
                if p.iteration and (p.iteration + offset) % every == 0 \
                        and p.scale == p.num_scales - 1:
                    ts = time.perf_counter()
                    sc = scorer.score(to_host(p.image))
                    scoring[0] += time.perf_counter() - ts
                    rows.append(dict(pair=c, config=name, it=p.iteration + offset, size=size,
                                     seconds=time.perf_counter() - t0 - scoring[0],
                                     losses=p.losses, **sc))
                    print(json.dumps(rows[-1]), flush=True)
            cfg = QCONFIGS[name] if name in QCONFIGS else CONFIGS[name]
            kw = dict(preset="quality") if name in QCONFIGS else dict(OLD_QUALITY)
            kw.update(model=model, seed=0)
            if cfg == "freeze":
                last = {}

                def first(p):
                    last["l"] = p.losses
                    cb(p)
                img = cpstyle.style_transfer(content, style, callback=first, callback_every=1,
                                             **{**kw, "num_iterations": 75})
                L = last["l"]
                img = cpstyle.style_transfer(
                    content, style, **{**kw, "init": to_host(img), "constant_weights": True,
                                       "weight_content": 1.5 / L["content"],
                                       "weight_style": 3.0 / L["style"],
                                       "weight_denoise": 0.3 / L["denoise"],
                                       "num_iterations": 125},
                    callback=lambda p: cb(p, 75, 25), callback_every=25)
            else:
                cfg = dict(cfg)
                every = cfg.pop("_every", 50)
                img = cpstyle.style_transfer(content, style, callback=lambda p: cb(p, 0, every),
                                             callback_every=every, **{**kw, **cfg})
            # the last picture beside OUT, to look at (not committed)
            cpstyle.save_image(to_host(img), f"{out.rsplit('.', 1)[0]}-{c}-{name}.png")
            with open(out, "a") as f:
                for r in rows:
                    f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
