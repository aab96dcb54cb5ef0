"""Draw docs/pose_convention.png: the C-arm frame, the zero (AP) pose and the pose parameters."""
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from medai.drr import CArmGeometry, Pose  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    carm = CArmGeometry(1020.0, 765.0)
    fig, (side, front) = plt.subplots(1, 2, figsize=(12, 5.2))
    # side view: patient lying supine, looking from the patient's right (A up, S to the right)
    side.set_title("Zero pose, seen from the patient's right side")
    side.add_patch(plt.Rectangle((-300, -120), 600, 240, color="#f2d0b5", ec="k"))
    side.text(0, 0, "CT volume\n(centre = isocentre)", ha="center", va="center")
    side.plot(0, carm.sid_mm, "o", color="gold", ms=14, mec="k")
    side.text(25, carm.sid_mm, "X-ray source\n(0, 0, -SID) in C-arm frame", va="center")
    det_y = -(carm.sdd_mm - carm.sid_mm)
    side.plot([-205, 205], [det_y, det_y], lw=6, color="#4a5568")
    side.text(215, det_y, "detector\nz = SDD - SID", va="center")
    side.annotate("", xy=(0, det_y + 10), xytext=(0, carm.sid_mm - 20),
                  arrowprops=dict(arrowstyle="->", color="crimson", lw=2))
    side.text(-20, 300, "+z (central ray)\nanterior -> posterior", color="crimson", ha="right")
    side.annotate("", xy=(-150, det_y - 60), xytext=(0, det_y - 60), arrowprops=dict(arrowstyle="->", lw=2))
    side.text(-75, det_y - 95, "+y (rows) = inferior", ha="center")
    side.text(-480, 830, "A", fontsize=14, weight="bold")
    side.text(380, -420, "S ->", fontsize=12)
    side.set_xlim(-520, 620)
    side.set_ylim(-450, 900)
    side.set_aspect("equal")
    side.set_xlabel("patient S-I (mm)")
    side.set_ylabel("patient A-P (mm)")

    # front view: the detector image as displayed
    front.set_title("DRR at the zero pose, as displayed (an AP radiograph)")
    front.add_patch(plt.Rectangle((0, 0), 256, 256, fill=False, lw=2))
    front.annotate("", xy=(120, 12), xytext=(12, 12), arrowprops=dict(arrowstyle="->", lw=2))
    front.text(14, 24, "+x: columns -> patient LEFT", va="bottom")
    front.annotate("", xy=(12, 120), xytext=(12, 12), arrowprops=dict(arrowstyle="->", lw=2))
    front.text(18, 125, "+y: rows -> INFERIOR", rotation=-90, va="top")
    front.text(128, 150, "(r0, c0): principal point\n= central ray", ha="center")
    front.plot(128, 128, "+", ms=16, color="crimson")
    text = ("pose = (tx, ty, tz, rx, ry, rz)\n"
            "p_carm = R_ap . Rz(rz) Ry(ry) Rx(rx) . (p_ras - c_ct) + t\n"
            "t: mm along columns, rows, central ray\n"
            "rx: about R-L (cranial/caudal), ry: about A-P (roll),\n"
            "rz: about S-I (LAO/RAO), degrees, about the CT centre c_ct")
    front.text(128, 268, text, ha="center", va="top", fontsize=9, family="monospace",
               bbox=dict(boxstyle="round", fc="w"))
    front.set_xlim(-10, 266)
    front.set_ylim(345, -10)
    front.set_aspect("equal")
    front.set_axis_off()
    np.testing.assert_allclose(Pose().matrix([0, 0, 0])[:3, :3] @ [0, -1, 0], [0, 0, 1])  # figure matches code
    fig.tight_layout()
    fig.savefig(os.path.join(HERE, "pose_convention.png"), dpi=90)


if __name__ == "__main__":
    main()
