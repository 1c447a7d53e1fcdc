"""File names of outputs shared by the apply side (which writes them) and the report side
(which reads them). Torch-free: the statistics environment imports it."""

from __future__ import annotations

from brainage import TEMPLATE_SPACE


def saliency_file(res_label: str, participant_id: str | None = None, group: str | None = None) -> str:
    """BIDS-derivative-like file name of a subject's or a group's Grad-RAM map."""
    entity = participant_id if participant_id is not None else f"group-{group}"
    return f"{entity}_space-{TEMPLATE_SPACE}_res-{res_label}_desc-gradram_saliency.nii.gz"
