"""Seconds to segment a 10 s clip with ``avseg segment`` (default: the ws-avs/demo model with its small encoder, 2 CPU threads).

    python benchmarks/segment_speed.py                          # 10 s clips at 640x360 and 1280x720, --fps 1 and 0
    python benchmarks/segment_speed.py --run /tmp/comp-run      # a trained run instead of the untrained demo model
    python benchmarks/segment_speed.py --sizes 1280x720 --fps 1 --threads 2 --device cpu

The clip (moving shapes, 25 fps H.264, 44.1 kHz stereo AAC tone) is written by PyAV into a temporary
folder, segmented with every output (mask PNGs, overlay MP4 with audio, GIF, contact sheet, JSON), and
removed. Speed does not depend on the weights, so without ``--run`` the demo recipe's model is built
untrained, with the small CNN image encoder that recipe used until session 15 (the image encoder of the
table in docs/segment.md, measured when the recipe still heard 3 s log-mel windows);
``--visual efficientnet_lite0`` times the recipe's image encoder now. One table row per (size, fps): wall seconds and where they went, and the process's CPU
seconds (all threads; on a shared machine the load average is printed too, as wall time depends on it).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch


def write_clip(path: Path, width: int, height: int, seconds: float, fps: int = 25, rate: int = 44100) -> Path:
    import av

    out = av.open(str(path), "w")
    v = out.add_stream("libx264", rate=fps)
    v.width, v.height, v.pix_fmt = width, height, "yuv420p"
    a = out.add_stream("aac", rate=rate, layout="stereo")
    yy, xx = np.mgrid[0:height, 0:width]
    for i in range(round(seconds * fps)):
        t = i / fps
        img = np.empty((height, width, 3), np.uint8)
        img[..., 0] = (xx * 255 // width).astype(np.uint8)
        img[..., 1] = (yy * 255 // height).astype(np.uint8)
        img[..., 2] = 90
        cx, cy = int(width * (0.3 + 0.4 * np.sin(t))), int(height * 0.5)
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < (height // 6) ** 2] = (250, 220, 40)
        frame = av.VideoFrame.from_ndarray(img, format="rgb24")
        frame.pts = i
        for p in v.encode(frame):
            out.mux(p)
    for p in v.encode():
        out.mux(p)
    n = round(seconds * rate)
    tone = (0.2 * np.sin(2 * np.pi * 440 * np.arange(n) / rate) * (1 + np.sin(2 * np.pi * 0.5 * np.arange(n) / rate))).astype(np.float32)
    for s in range(0, n, 1024):
        chunk = np.stack([tone[s : s + 1024]] * 2)
        af = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="fltp", layout="stereo")
        af.sample_rate, af.pts, af.time_base = rate, s, Fraction(1, rate)
        for p in a.encode(af):
            out.mux(p)
    for p in a.encode(None):
        out.mux(p)
    out.close()
    return path


def demo_predictor(device: str, batch_size: int, visual: str = "small"):
    """The ws-avs/demo recipe's model with the given image encoder (128 px), untrained."""
    from avseg.inference.predictor import AudioSettings, Predictor
    from avseg.methods.ws_avs import WSAVSNet, build_segmenter
    from avseg.runner import build_config

    weights = "none" if visual == "small" else "imagenet"
    _, cfg = build_config("ws-avs", "ws-avs/demo", data_root=".", layout="s4", overrides=[f"visual={visual}", f"visual_weights={weights}"])
    model = WSAVSNet(build_segmenter(cfg), tau=cfg.tau, scale_by_tau=cfg.m2icl_scale_by_tau, m2icl_weight=cfg.m2icl_weight)
    audio = AudioSettings.from_data_config(cfg.data.audio_frontend, cfg.data.audio_window, cfg.data.layout)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    return Predictor(model, image_size=cfg.data.image_size, audio=audio, device=device, batch_size=batch_size, name=f"ws-avs/demo, {visual} encoder (untrained, {params:.2f} M parameters)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="trained run folder (default: the ws-avs/demo model, untrained)")
    parser.add_argument("--visual", default="small", choices=("small", "efficientnet_lite0"), help="image encoder of the untrained demo model (default small, the image encoder of the docs/segment.md table)")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--sizes", nargs="+", default=["640x360", "1280x720"], help="WxH of the clip, one row each")
    parser.add_argument("--fps", type=float, nargs="+", default=[1.0, 0.0], help="--fps values (0 = every frame)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2: the 2-core target)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args(argv)

    from avseg.inference.predictor import Predictor
    from avseg.inference.segment import segment_video

    torch.set_num_threads(args.threads)
    if args.run:
        predictor = Predictor.from_run(args.run, device=args.device, batch_size=args.batch_size)
    else:
        predictor = demo_predictor(args.device, args.batch_size, args.visual)
    print(f"model: {predictor.name}; image size {predictor.image_size}; audio {predictor.audio.frontend} "
          f"({predictor.audio.window_seconds} s windows); device {predictor.device}; torch threads {torch.get_num_threads()}")  # fmt: skip
    print(f"load average before: {' '.join(f'{v:.1f}' for v in os.getloadavg())} on {os.cpu_count()} CPUs")
    print(f"{'clip':<16}{'fps':>5}{'frames':>8}{'total s':>9}{'decode':>8}{'audio':>7}{'model':>7}{'write':>7}{'s/frame':>9}{'x realtime':>11}{'cpu s':>8}")
    tmp = Path(tempfile.mkdtemp(prefix="avseg_segment_speed_"))
    try:
        for size in args.sizes:
            w, h = (int(v) for v in size.lower().split("x"))
            clip = write_clip(tmp / f"clip_{size}.mp4", w, h, args.seconds)
            for fps in args.fps:
                start, cpu = time.perf_counter(), time.process_time()
                summary = segment_video(predictor, clip, tmp / f"out_{size}_{fps}", fps=fps, progress=False)
                total, cpu = time.perf_counter() - start, time.process_time() - cpu
                s = summary["seconds"]
                n = summary["num_frames"]
                print(f"{args.seconds:.0f} s {size:<11}{fps:>5g}{n:>8}{total:>9.2f}{s['decode']:>8.2f}{s['audio']:>7.2f}"
                      f"{s['model']:>7.2f}{s['write']:>7.2f}{total / n:>9.3f}{args.seconds / total:>11.2f}{cpu:>8.1f}")  # fmt: skip
                shutil.rmtree(tmp / f"out_{size}_{fps}", ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"load average after: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
