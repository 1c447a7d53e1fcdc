"""Categories of the Snakemake HTML report, in the order a reader goes through the study."""

CAT_QC = "1. Cohort and QC"
CAT_TRAIN = "2. Training curves"
CAT_ACC = "3. Accuracy"
CAT_SAL = "4. Saliency"
CAT_DIS = "5. Disease"
CAT_PROV = "6. Provenance"
