"""`python -m bench.media`: camera RAW and video thumbnails against their own baselines, measured
in the same run.

    python -m bench.media [--quick] [--repeats 5] [--out FILE]

- RAW: a 12 MP DNG (4000×3000 RGGB mosaic of a photo-like picture, 12 bit in 16, compressed
  as lossless JPEG as cameras and Adobe's converter store it, written by tests/mediagen.py)
  with a full-size (4000×3000) JPEG preview, as cameras store it. render()
  of one 256 px size from the preview, against render() of the same DNG without its preview
  (LibRaw's half-size demosaic, camera white balance, 8 bit: what thumbwatch does when there is
  no preview). Target: the preview path >= 5x faster. Beside it, as figures: the bare demosaic
  (rawpy alone, no thumbnail made), and the demosaic of an uncompressed DNG of the same mosaic
  (whose unpacking is a plain copy: the preview's lead is smallest there).
- Video: a 10 s 1080p H.264 clip (30 fps, libx264 at its defaults: High profile, a keyframe
  at the start). render() of one 256 px size (the poster frame: open, decode, luma check,
  RGB, resize, JPEG) against opening the file and decoding its first keyframe with the same
  decoder settings (one thread), nothing else. Target: <= 2x. Beside it, as a figure: a 2 s
  clip black for its first half second (the frames up to the first bright sample decoded).

Each case runs in-process, rounds interleaved so that a drifting load hits all alike, timed
in CPU time (process_time: the work done, whatever else loads this shared box); figures are
medians over the rounds with their spread (fastest–slowest). Equal output settings: one
256 px JPEG at the bench's quality, same OutputConfig for every render() row.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

from PIL import Image

from watcher.config import OutputConfig, SizeSpec
from watcher.paths import Target
from watcher.render import RenderSettings, render

from . import corpus, methods
from .__main__ import RESULTS, machine

OUT = corpus.CACHE / "out-media"
MARGIN = 0.01
RAW_SIZE = (4000, 3000)
CLIP_SIZE, CLIP_SECONDS, CLIP_RATE = (1920, 1080), 10, 30


def _mediagen():
    spec = importlib.util.spec_from_file_location("_mediagen", Path(__file__).resolve().parent.parent / "tests" / "mediagen.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def inputs() -> dict[str, Path]:
    """The DNG pair and the clip, made once into bench/cache."""
    gen = _mediagen()
    folder = corpus.CACHE / "media"
    folder.mkdir(parents=True, exist_ok=True)
    made = {"dng_preview": folder / "raw12mp-lj-preview.dng", "dng_bare": folder / "raw12mp-lj-nopreview.dng",
            "dng_bare_uncompressed": folder / "raw12mp-nopreview.dng", "clip": folder / "clip-1080p-10s.mp4",
            "clip_dark_start": folder / "clip-1080p-2s-dark-start.mp4"}
    if not all(made[k].exists() for k in ("dng_preview", "dng_bare", "dng_bare_uncompressed")):
        picture = corpus.photo_like(7, *RAW_SIZE)
        cfa = gen.mosaic(picture)
        gen.dng(made["dng_bare"], (0, 0, 0), size=RAW_SIZE, cfa=cfa, compressed=True)
        gen.dng(made["dng_bare_uncompressed"], (0, 0, 0), size=RAW_SIZE, cfa=cfa)
        gen.dng(made["dng_preview"], (0, 0, 0), size=RAW_SIZE, cfa=cfa, compressed=True, preview=gen.preview_jpeg(picture, quality=92))
    if not made["clip"].exists():
        scene = corpus.photo_like(8, CLIP_SIZE[0] + CLIP_SECONDS * CLIP_RATE, CLIP_SIZE[1])
        frames = [scene.crop((i, 0, i + CLIP_SIZE[0], CLIP_SIZE[1])) for i in range(CLIP_SECONDS * CLIP_RATE)]  # a slow pan
        temp = made["clip"].with_suffix(".tmp.mp4")
        gen.clip(temp, frames, rate=CLIP_RATE)
        temp.replace(made["clip"])
    if not made["clip_dark_start"].exists():
        scene = corpus.photo_like(9, CLIP_SIZE[0] + 2 * CLIP_RATE, CLIP_SIZE[1])
        black = Image.new("RGB", CLIP_SIZE)
        frames = [black] * (CLIP_RATE // 2) + [scene.crop((i, 0, i + CLIP_SIZE[0], CLIP_SIZE[1])) for i in range(3 * CLIP_RATE // 2)]
        temp = made["clip_dark_start"].with_suffix(".tmp.mp4")
        gen.clip(temp, frames, rate=CLIP_RATE)
        temp.replace(made["clip_dark_start"])
    return made


def _render(src: str, where: str) -> None:
    spec = SizeSpec("s256", 256, 256, quality=methods.QUALITY)
    target = OUT / where / (Path(src).name + ".jpg")
    target.parent.mkdir(parents=True, exist_ok=True)
    render(src, [Target(spec, str(target))], RenderSettings(OutputConfig(sizes=(spec,)), 200_000_000))


def half_demosaic(src: str) -> None:
    import rawpy

    with rawpy.imread(src) as raw:
        raw.postprocess(half_size=True, use_camera_wb=True, output_bps=8, user_flip=0)


def first_keyframe(src: str) -> None:
    import av

    with av.open(src) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1  # as render() decodes
        frame = next(container.decode(stream))
        assert frame.key_frame


def timed_rounds(cases: dict, rounds: int) -> dict[str, list[float]]:
    """CPU ms of each case, one sample per round; cases interleaved within each round."""
    for name, fn in cases.items():
        fn("warm")
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for rnd in range(rounds):
        for name, fn in cases.items():
            gc.collect()
            start = time.process_time()
            fn(f"{name}-{rnd}")
            samples[name].append((time.process_time() - start) * 1000)
    return samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.media", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds: a smoke run")
    parser.add_argument("--repeats", type=int, default=5, help="rounds (default: %(default)s, at least 3)")
    parser.add_argument("--out", type=Path, default=RESULTS / "media.json")
    args = parser.parse_args(argv)
    rounds = 3 if args.quick else max(3, args.repeats)
    try:
        import av  # noqa: F401
        import rawpy  # noqa: F401
    except ImportError as err:
        print(f"bench.media: needs the raw and video extras (pip install -e '.[raw,video]'): {err}", file=sys.stderr)
        return 2

    print("[bench.media] making the inputs (once: a 12 MP DNG pair, a 10 s 1080p clip) …", file=sys.stderr, flush=True)
    made = inputs()
    for p in made.values():
        p.read_bytes()  # warm the page cache
    cases = {
        "raw_render_256_preview": lambda where: _render(str(made["dng_preview"]), where),
        "raw_render_256_demosaic": lambda where: _render(str(made["dng_bare"]), where),
        "raw_half_demosaic_alone": lambda where: half_demosaic(str(made["dng_bare"])),
        "raw_render_256_demosaic_unc": lambda where: _render(str(made["dng_bare_uncompressed"]), where),
        "video_render_256_poster": lambda where: _render(str(made["clip"]), where),
        "video_first_keyframe": lambda where: first_keyframe(str(made["clip"])),
        "video_render_256_dark_start": lambda where: _render(str(made["clip_dark_start"]), where),
    }
    print(f"[bench.media] {rounds} rounds …", file=sys.stderr, flush=True)
    samples = timed_rounds(cases, rounds)
    med = {k: statistics.median(v) for k, v in samples.items()}
    results = {
        "machine": machine(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "rounds": rounds,
        "inputs": {"dng": f"{RAW_SIZE[0]}×{RAW_SIZE[1]} 12-bit RGGB mosaic, lossless JPEG, {made['dng_preview'].stat().st_size / 1e6:.1f} MB with a "
                          f"{RAW_SIZE[0]}×{RAW_SIZE[1]} JPEG q92 preview ({made['dng_bare'].stat().st_size / 1e6:.1f} MB without)",
                   "clip": f"{CLIP_SECONDS} s {CLIP_SIZE[0]}×{CLIP_SIZE[1]} H.264 (libx264 defaults) at {CLIP_RATE} fps, a slow pan, "
                           f"{made['clip'].stat().st_size / 1e6:.1f} MB; and 2 s of the same, black for its first 0.5 s"},
        "ms": {k: round(v, 2) for k, v in med.items()},
        "ms_spread": {k: [round(min(v), 2), round(max(v), 2)] for k, v in samples.items()},
    }
    rows = targets(samples)
    results["targets"] = [{"name": n, "value": v, "verdict": w} for n, v, w in rows]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    print(report(results, rows))
    print(f"\nwritten: {args.out}")
    shutil.rmtree(OUT, ignore_errors=True)
    return 0


def targets(samples: dict[str, list[float]]) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []

    def ratio(a: str, b: str) -> list[float]:
        return [x / y for x, y in zip(samples[a], samples[b])]

    def add(name: str, values: list[float], limit: float, below: bool) -> None:
        value = statistics.median(values)
        ok = value <= limit if below else value >= limit
        verdict = "FAIL" if not ok else "MARGINAL" if abs(value - limit) < MARGIN * abs(limit) else "PASS"
        rows.append((name, f"{value:.3g}× ({'≤' if below else '≥'} {limit:g}×), spread {min(values):.3g}–{max(values):.3g} "
                           f"over {len(values)} rounds", verdict))

    add("RAW 256 px from its preview: speed-up over the same DNG by half-size demosaic",
        ratio("raw_render_256_demosaic", "raw_render_256_preview"), 5, False)
    rows.append(("  RAW 256 px from its preview / the bare half-size demosaic (rawpy alone), speed-up (a figure)",
                 f"{statistics.median(ratio('raw_half_demosaic_alone', 'raw_render_256_preview')):.3g}×", "FIGURE"))
    rows.append(("  the same against an uncompressed DNG's demosaic (unpacking is a copy there; rare in cameras) (a figure)",
                 f"{statistics.median(ratio('raw_render_256_demosaic_unc', 'raw_render_256_preview')):.3g}×", "FIGURE"))
    add("video poster frame 256 px / decoding its first keyframe", ratio("video_render_256_poster", "video_first_keyframe"), 2, True)
    rows.append(("  a clip black for its first 0.5 s: poster frame / first keyframe decode (the frames up to the bright one decoded) (a figure)",
                 f"{statistics.median(ratio('video_render_256_dark_start', 'video_first_keyframe')):.3g}×", "FIGURE"))
    return rows


def report(r: dict, rows: list[tuple[str, str, str]]) -> str:
    m = r["machine"]
    spread = r["ms_spread"]
    lines = [f"thumbwatch bench.media — {m['cpu']} ({m['arch']}), {m['cpus']} CPUs ({m['usable_cpus']} usable), "
             f"Python {m['python']}, Pillow {m['pillow']}, rawpy/LibRaw and PyAV/FFmpeg as installed",
             "inputs: " + "; ".join(f"{k}: {v}" for k, v in r["inputs"].items()),
             f"CPU ms per file, median of {r['rounds']} rounds (fastest–slowest):"]
    for name, value in r["ms"].items():
        lines.append(f"  {name:28s} {value:9.2f}  ({spread[name][0]}–{spread[name][1]})")
    lines += ["", "targets:"]
    for name, value, verdict in rows:
        lines.append(f"  {verdict:8s}  {name}: {value}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
