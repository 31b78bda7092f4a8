"""`python -m bench.formats`: the formats beyond JPEG, each against its own decode floor measured
in the same run, and what the format dispatch costs the JPEG path.

    python -m bench.formats [--quick] [--repeats 5] [--against /path/to/other/tree] [--out FILE]

- HEIC (12 MP, made with pillow-heif: HEVC, a 320 px thumbnail item, orientation 1/6 as irot):
  render() of one 256 px size against the full decode of the primary image (the floor: the
  least any Pillow-based HEIC thumbnailer does); against libvips' heifload (pyvips.thumbnail)
  at equal settings when this pyvips has an HEVC decoder (else it says so); and a 75 px size
  with output.embedded_preview, from the thumbnail item, against the full decode floor.
- AVIF (12 MP, Pillow's own plugin, when it has one): render() of 256 px against its decode floor.
- JPEG: render() one size against the decode floor, as `python -m bench` measures it; the
  dispatch itself (formats.format_for → decoder → open function) timed directly, as a share of
  a render; and with --against, render() from another source tree (e.g. main's worktree) on
  the same photos in the same run, each in its own process, rounds interleaved.

Every case runs in-process, one photo after another, rounds interleaved so that a drifting
load hits all alike, timed in CPU time (the work done, whatever else loads this shared box;
for HEIC and AVIF the decoder's threads added up); figures are medians over the rounds with
their spread (fastest–slowest).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image, features

from watcher.config import OutputConfig, SizeSpec
from watcher.paths import Target
from watcher.render import RenderSettings, formats, render

from . import corpus, methods
from .__main__ import RESULTS, machine

OUT = corpus.CACHE / "out-formats"
MARGIN = 0.01


def _render(src: str, box: int, embedded: bool, where: str) -> None:
    spec = SizeSpec(f"s{box}", box, box, quality=methods.QUALITY)
    target = OUT / where / (Path(src).stem + ".jpg")
    target.parent.mkdir(parents=True, exist_ok=True)
    render(src, [Target(spec, str(target))], RenderSettings(OutputConfig(sizes=(spec,), embedded_preview=embedded), 200_000_000))


def heif_floor(src: str) -> None:
    """The primary image decoded in full by pillow-heif's Pillow plugin, as render() has it decode."""
    from watcher.render import heif

    heif._register()  # noqa: SLF001 - the same plugin set-up (no depth or auxiliary images) render() uses
    with Image.open(src) as im:
        im.load()


def plain_floor(src: str) -> None:
    with Image.open(src) as im:
        im.load()


def pyvips_heif(src: str) -> None:
    import pyvips

    path = OUT / "pyvips" / (Path(src).stem + ".jpg")
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{os.getpid()}-{path.name}.tmp.jpg")
    pyvips.Image.thumbnail(src, 256, height=256).jpegsave(str(temp), Q=methods.QUALITY, strip=True, subsample_mode="on")
    os.replace(temp, path)


def pyvips_heif_problem(src: str) -> str | None:
    """None when this pyvips decodes HEIC, else why not (pyvips-binary's libheif has no HEVC)."""
    if not methods.pyvips_available():
        return "pyvips is not installed"
    try:
        pyvips_heif(src)
    except Exception as err:  # noqa: BLE001 - libvips reports a missing codec as a generic error
        return " ".join(str(err).split())[:160]
    return None


def timed_rounds(cases: dict, jobs: dict[str, list[str]], rounds: int) -> dict[str, list[float]]:
    """CPU ms per image of each case (all threads of this process: libheif and libavif decode
    on several), one sample per round; cases interleaved within each round."""
    for name, fn in cases.items():
        fn(jobs[name][0], "warm")
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for rnd in range(rounds):
        for name, fn in cases.items():
            gc.collect()
            start = time.process_time()
            for src in jobs[name]:
                fn(src, f"{name}-{rnd}")
            samples[name].append((time.process_time() - start) * 1000 / len(jobs[name]))
    return samples


def dispatch_us(src: str, count: int = 20000) -> float:
    """µs per photo for picking and reaching the decoder: format_for + decoder() + opener()."""
    start = time.perf_counter()
    for _ in range(count):
        formats.format_for(src, "jpeg").decoder().opener()
    return (time.perf_counter() - start) * 1e6 / count


_CHILD = """
import gc, json, sys, time
from watcher.config import OutputConfig, SizeSpec
from watcher.paths import Target
from watcher.render import RenderSettings, render
spec = SizeSpec("s256", 256, 256, quality=85)
settings = RenderSettings(OutputConfig(sizes=(spec,)), 200_000_000)
paths, out = json.loads(sys.argv[1]), sys.argv[2]
run = lambda: [render(p, [Target(spec, out + "/" + p.rsplit("/", 1)[1])], settings) for p in paths]
run()
gc.collect()
start = time.process_time()  # CPU time: render() is one thread, and this box's other load is not ours
run()
print((time.process_time() - start) * 1000 / len(paths))
"""


def tree_ms(tree: Path, paths: list[Path], out: Path) -> float:
    """render() of one 256 px size per 12 MP JPEG, CPU ms, with the watcher package of `tree`."""
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(tree))
    done = subprocess.run([sys.executable, "-c", _CHILD, json.dumps([str(p) for p in paths]), str(out)],
                          env=env, cwd=str(tree), capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.formats", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer photos and rounds: a smoke run")
    parser.add_argument("--repeats", type=int, default=5, help="rounds (default: %(default)s)")
    parser.add_argument("--against", type=Path, default=None, help="another source tree whose render() to time on the JPEGs")
    parser.add_argument("--out", type=Path, default=RESULTS / "formats.json")
    args = parser.parse_args(argv)
    rounds = 2 if args.quick else args.repeats
    nheic, njpeg = (2, 4) if args.quick else (4, 12)

    print("[bench.formats] making the inputs (once; x265 takes a while) …", file=sys.stderr, flush=True)
    heics = [str(p) for p in corpus.heif_set(nheic)]
    avifs = [str(p) for p in corpus.avif_set(nheic)] if features.check("avif") else []
    jpegs = [str(p) for p in corpus.photo_set("cam12", njpeg, 4000, 3000)]
    for p in heics + avifs + jpegs:
        Path(p).read_bytes()  # warm the page cache

    vips_problem = pyvips_heif_problem(heics[0])
    cases = {
        "heic_decode_floor": lambda src, where: heif_floor(src),
        "heic_render_256": lambda src, where: _render(src, 256, False, where),
        "heic_render_75_thumbnail_item": lambda src, where: _render(src, 75, True, where),
        "heic_render_75_full": lambda src, where: _render(src, 75, False, where),
        "jpeg_decode_floor": lambda src, where: methods.decode_floor((src, "")),
        "jpeg_render_256": lambda src, where: _render(src, 256, False, where),
    }
    jobs = {name: heics for name in cases if name.startswith("heic")} | {"jpeg_decode_floor": jpegs, "jpeg_render_256": jpegs}
    if vips_problem is None:
        cases["heic_pyvips_256"] = lambda src, where: pyvips_heif(src)
        jobs["heic_pyvips_256"] = heics
    if avifs:
        cases["avif_decode_floor"] = lambda src, where: plain_floor(src)
        cases["avif_render_256"] = lambda src, where: _render(src, 256, False, where)
        jobs["avif_decode_floor"] = jobs["avif_render_256"] = avifs

    print(f"[bench.formats] {rounds} rounds …", file=sys.stderr, flush=True)
    samples = timed_rounds(cases, jobs, rounds)
    against: dict[str, list[float]] = {}
    if args.against:
        here = Path(__file__).resolve().parent.parent
        sample = [Path(p) for p in jpegs]
        trees = [("this_tree", here), ("against", args.against.resolve())]
        for rnd in range(rounds):
            for name, tree in trees if rnd % 2 == 0 else trees[::-1]:  # ABBA: neither always goes first
                against.setdefault(name, []).append(tree_ms(tree, sample, OUT / f"tree-{name}-{rnd}"))
    dispatch = statistics.median(dispatch_us(jpegs[0]) for _ in range(5))

    med = {k: statistics.median(v) for k, v in samples.items()}
    results = {
        "machine": machine(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "rounds": rounds,
        "inputs": {"heic": f"{len(heics)} × 12 MP (4032×3024) photo-like, HEVC q50, 320 px thumbnail item, "
                           f"{sum(Path(p).stat().st_size for p in heics) / len(heics) / 1e6:.2f} MB mean",
                   "avif": f"{len(avifs)} × 12 MP, Pillow AVIF q60" if avifs else "this Pillow has no AVIF plugin",
                   "jpeg": f"{len(jpegs)} × 12 MP camera-like JPEGs (bench corpus cam12)"},
        "ms_per_image": {k: round(v, 2) for k, v in med.items()},
        "ms_per_image_spread": {k: [round(min(v), 2), round(max(v), 2)] for k, v in samples.items()},
        "pyvips_heif": vips_problem or "decodes HEIC",
        "dispatch_us_per_photo": round(dispatch, 2),
        "against": {"tree": str(args.against), "ms_per_image": {k: [round(x, 2) for x in v] for k, v in against.items()}} if against else None,
    }
    rows = targets(results, samples, against)
    results["targets"] = [{"name": n, "value": v, "verdict": w} for n, v, w in rows]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    print(report(results, rows))
    print(f"\nwritten: {args.out}")
    shutil.rmtree(OUT, ignore_errors=True)
    return 0


def targets(r: dict, samples: dict[str, list[float]], against: dict[str, list[float]]) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []

    def add(name: str, values: list[float], limit: float, below: bool, unit: str = "×") -> None:
        value = statistics.median(values)
        ok = value <= limit if below else value >= limit
        verdict = "FAIL" if not ok else "MARGINAL" if abs(value - limit) < MARGIN * abs(limit) else "PASS"
        spread = f", spread {min(values):.3g}–{max(values):.3g} over {len(values)} rounds" if len(values) > 1 else ""
        rows.append((name, f"{value:.3g}{unit} ({'≤' if below else '≥'} {limit:g}{unit}){spread}", verdict))

    def ratio(a: str, b: str, inverse: bool = False) -> list[float]:
        return [(y / x if inverse else x / y) for x, y in zip(samples[a], samples[b])]

    add("HEIC render 256 px / its full-decode floor, per image", ratio("heic_render_256", "heic_decode_floor"), 1.1, True)
    add("HEIC 75 px from the thumbnail item: speed-up over the full HEIC decode floor",
        ratio("heic_render_75_thumbnail_item", "heic_decode_floor", inverse=True), 10, False)
    rows.append(("  HEIC 75 px without the thumbnail item / its full-decode floor (a figure)",
                 f"{statistics.median(ratio('heic_render_75_full', 'heic_decode_floor')):.3g}×", "FIGURE"))
    if "heic_pyvips_256" in samples:
        rows.append(("HEIC render 256 px / pyvips heifload thumbnail at equal settings, time (a figure)",
                     f"{statistics.median(ratio('heic_render_256', 'heic_pyvips_256')):.3g}×", "FIGURE"))
    else:
        rows.append(("HEIC against pyvips heifload", f"not measured: {r['pyvips_heif']}", "FIGURE"))
    if "avif_render_256" in samples:
        add("AVIF render 256 px / its full-decode floor, per image", ratio("avif_render_256", "avif_decode_floor"), 1.1, True)
    add("JPEG render 256 px / decode floor, per image (as python -m bench)", ratio("jpeg_render_256", "jpeg_decode_floor"), 1.1, True)
    share = r["dispatch_us_per_photo"] / 1000 / r["ms_per_image"]["jpeg_render_256"] * 100
    add("format dispatch (format_for, decoder, open function) / a 12 MP JPEG render", [share], 0.5, True, " %")
    if against:
        add(f"JPEG render() CPU time of this tree / of {r['against']['tree']}, same photos, same run",
            [a / b for a, b in zip(against["this_tree"], against["against"])], 1.03, True)
    return rows


def report(r: dict, rows: list[tuple[str, str, str]]) -> str:
    m = r["machine"]
    spread = r["ms_per_image_spread"]
    lines = [f"thumbwatch bench.formats — {m['cpu']} ({m['arch']}), {m['cpus']} CPUs ({m['usable_cpus']} usable), "
             f"Python {m['python']}, Pillow {m['pillow']}, {m['pyvips'] or 'no pyvips'}",
             "inputs: " + "; ".join(f"{k}: {v}" for k, v in r["inputs"].items()),
             f"CPU ms per image, median of {r['rounds']} rounds (fastest–slowest):"]
    for name, value in r["ms_per_image"].items():
        lines.append(f"  {name:34s} {value:9.2f}  ({spread[name][0]}–{spread[name][1]})")
    lines.append(f"  format dispatch: {r['dispatch_us_per_photo']} µs per photo")
    if r["against"]:
        lines.append(f"  render() CPU ms per JPEG, this tree vs {r['against']['tree']} (each round): {r['against']['ms_per_image']}")
    lines += ["", "targets:"]
    for name, value, verdict in rows:
        lines.append(f"  {verdict:8s}  {name}: {value}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
