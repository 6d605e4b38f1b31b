"""reportgen's benchmark: ``python -m bench [--device cpu|cuda] [--quick] [--only a,b] [--out FILE.jsonl]``.

Prints one JSON object per measurement on stdout (progress goes to stderr). Every ratio in a line comes from
measurements taken in this process, on the same batch (kernel-level ones) or the same image folder (end-to-end
ones). Measurements, in run order (names for ``--only``):

    forward_only, floor, floor_cl,                           one model, one random batch, timed round-robin;
    ours_gradcam, ours_five_cams,                            ``_cl``: a channels-last copy (ours always use it,
    pytorch_grad_cam, torchcam, torchcam_cl, captum          as ``reportgen run`` does; peers as users call them)
    scorecam                                                 ours vs pytorch-grad-cam ScoreCAM, map correlation
    metrics                                                  trust metrics: seconds/image, multiple of a forward
    draw                                                     overlays/s: reportgen.figures vs one matplotlib figure each
    e2e, seed                                                ``reportgen run`` cold/warm/PDF vs the seed recipe
    memory, pdf                                              peak RSS at 100 and 1,000 images; a 100-image PDF
    report_pdf, report_index                                 300 images' full PDF; a 1,000-image index in Chromium

Aliases: ``cams`` (the first nine), ``peers`` (the peers), ``report`` (the last two), ``all``.
"""

__all__ = ["MEASUREMENTS", "ALIASES"]

CAM_GROUP = ("forward_only", "floor", "floor_cl", "ours_gradcam", "ours_five_cams", "pytorch_grad_cam", "torchcam",
             "torchcam_cl", "captum")
MEASUREMENTS = (*CAM_GROUP, "scorecam", "metrics", "draw", "e2e", "seed", "memory", "pdf", "report_pdf", "report_index")
ALIASES = {
    "cams": CAM_GROUP,
    "peers": ("pytorch_grad_cam", "torchcam", "torchcam_cl", "captum"),
    "report": ("report_pdf", "report_index"),
    "all": MEASUREMENTS,
}
