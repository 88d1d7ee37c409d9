"""A batch driver process for the cluster tests (killed and started again by them).

    python ray_driver.py ARCHIVE OUT ADDRESS MARKS_DIR DELAY_S

runs ``run_batch`` on the Ray cluster at ADDRESS with two workers whose runner sleeps DELAY_S per
frame and marks where it runs (see ``cluster_helpers.marking_runner``); prints the counts.
"""

import json
import sys

from cluster_helpers import marking_factory

from deepis_rt.cluster.ray_batch import run_batch

if __name__ == "__main__":
    archive, out, address, marks, delay_s = sys.argv[1:6]
    report = run_batch(archive, out, segmenter_factory=marking_factory(marks, float(delay_s)), ray_address=address,
                       num_workers=2, retries=0, progress=False,
                       stream_settings={"max_batch": 1, "write_masks": False})
    print(json.dumps(report.counts))
