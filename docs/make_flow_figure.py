"""Draw docs/flow_convention.png: what a flow in our convention does to an image.

Run from the repository root: ``.venv/bin/python docs/make_flow_figure.py``.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from torchattacks_deform import warp  # noqa: E402

OUT = Path(__file__).with_name("flow_convention.png")


def main(out: Path = OUT) -> None:
    size = 9
    img = torch.zeros(1, 1, size, size)
    img[0, 0, 3:6, 3] = 1.0  # a vertical bar in column 3
    img[0, 0, 5, 3:6] = 1.0  # and a foot to the right: an "L"
    flow = torch.zeros(1, 2, size, size)
    flow[0, 0] = -1.0  # channel 0 = x: every output pixel reads one pixel to its LEFT
    flow[0, 1] = -1.0  # channel 1 = y: ... and one pixel UP
    out_img = warp(img, flow)

    fig, axes = plt.subplots(1, 3, figsize=(10, 4.4))
    axes[0].imshow(img[0, 0], cmap="gray", vmin=0, vmax=1)
    axes[0].set_title("input x")
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    axes[1].imshow(img[0, 0], cmap="gray", vmin=0, vmax=1, alpha=0.35)
    axes[1].quiver(xx, yy, flow[0, 0], flow[0, 1], angles="xy", scale_units="xy", scale=2, color="tab:red",
                   width=0.006)
    axes[1].set_title("flow v: (-1, -1) px\narrows (half length): where pixels read from")
    axes[2].imshow(out_img[0, 0], cmap="gray", vmin=0, vmax=1)
    axes[2].set_title("warp(x, v): content moves\n+1 px right and +1 px down")
    for ax in axes:
        ax.set_xticks(range(size))
        ax.set_yticks(range(size))
        ax.tick_params(labelsize=6)
        ax.set_xlabel("x = column (channel 0)")
        ax.set_ylabel("y = row (channel 1)")
    fig.suptitle("out[i, j] = bilinear(x, row = i + v[1, i, j], col = j + v[0, i, j])", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main()
