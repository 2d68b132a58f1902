"""bench/served_report.py: the host's CPU split over a run, from the vmstat file gpu_served.sh saves."""

import shutil
import subprocess

import pytest

from bench.served_report import host_cpu

SAMPLE = """procs -----------memory---------- ---swap-- -----io---- -system-- ------cpu-----
 r  b   swpd   free   buff  cache   si   so    bi    bo   in   cs us sy id wa st
 9  0      0 20412148  19088 2027844    0    0  1919  2348  644 1735 58 10 31  0  0
 4  0      0 20412148  19088 2027844    0    0     0     0  582  160 40 20 30  0 10
 2  0      0 20412148  19088 2027844    0    0     0     0  558  108 60 10 30  0  0
"""


def test_means_leave_out_the_since_boot_row(tmp_path):
    path = tmp_path / "vmstat_hap_128.txt"
    path.write_text(SAMPLE + "Terminated\n")
    assert host_cpu(path) == {"host_runq": 3.0, "host_us": 50.0, "host_sy": 15.0, "host_idle": 30.0, "host_steal": 5.0}


def test_missing_or_empty_files_give_nothing(tmp_path):
    assert host_cpu(tmp_path / "absent.txt") == {}
    (tmp_path / "short.txt").write_text(SAMPLE.splitlines()[0] + "\n" + SAMPLE.splitlines()[1] + "\n")
    assert host_cpu(tmp_path / "short.txt") == {}


@pytest.mark.skipif(shutil.which("vmstat") is None, reason="no vmstat here")
def test_real_vmstat_output_parses(tmp_path):
    path = tmp_path / "v.txt"
    path.write_text(subprocess.run(["vmstat", "-n", "1", "3"], capture_output=True, text=True, check=True).stdout)
    got = host_cpu(path)
    assert set(got) == {"host_runq", "host_us", "host_sy", "host_idle", "host_steal"}
    shares = [got[k] for k in ("host_us", "host_sy", "host_idle", "host_steal")]
    assert all(x >= 0 for x in shares) and sum(shares) <= 101  # io wait (wa) is the rest of 100
