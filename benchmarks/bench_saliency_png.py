"""Seconds per saliency PNG (brainage.apply.explain.plot_group_map) in a process like the saliency
rule's (torch imported, a ResNet18 built), with and without the objects alive before the plot
frozen out of garbage collection (brainage.apply.explain.gc_frozen).

    python benchmarks/bench_saliency_png.py [--reps 4] [--res 4]

nilearn calls gc.collect() every time it reads an image (12 times per PNG); each call walks
every object of the process. The baseline runs the same function with gc_frozen replaced by a
no-op; the two alternate, so both see the same machine load. A map of a smooth random field on
the template, resources written by brainage.data.atlases.build_resources into a temporary folder.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=4)
    parser.add_argument("--res", type=float, default=4.0)
    args = parser.parse_args()

    import torch  # noqa: F401  (the saliency rule's process holds torch and a network)

    # gc_frozen is swapped where plot_group_map looks it up: in its own module
    from brainage.apply.explain import plots
    from brainage.data.atlases import build_resources
    from brainage.models.networks import build_age_model

    model = build_age_model({"backbone": "resnet18"}, age_mean=55.0, age_sd=15.0)  # noqa: F841
    frozen = plots.gc_frozen
    with tempfile.TemporaryDirectory() as tmp:
        paths = build_resources(tmp, [args.res])[args.res]
        template = nib.load(str(paths["template"]))
        mask = np.asanyarray(nib.load(str(paths["mask"])).dataobj) > 0
        field = ndimage.gaussian_filter(np.random.default_rng(0).random(mask.shape), 2.0).astype(np.float32)
        img = nib.Nifti1Image(field, template.affine)
        times: dict[str, list[float]] = {"baseline (gc as is)": [], "gc_frozen": []}
        plots.plot_group_map(img, template, mask, "warm-up", Path(tmp) / "warm.png")
        for rep in range(args.reps):
            for name in times:
                plots.gc_frozen = frozen if name == "gc_frozen" else contextlib.nullcontext
                start = time.perf_counter()
                plots.plot_group_map(img, template, mask, name, Path(tmp) / f"{rep}.png")
                times[name].append(time.perf_counter() - start)
        plots.gc_frozen = frozen
    base = statistics.median(times["baseline (gc as is)"])
    print(f"saliency PNG at {args.res:g} mm, median of {args.reps}:")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:<22} {median:6.2f} s per PNG   ratio to baseline {median / base:5.2f}")


if __name__ == "__main__":
    main()
