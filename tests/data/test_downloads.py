"""A download that fails (no network) is one DataError saying where to put the files."""
import pytest
import torchvision.datasets

from metalearn.data.cifar import load_fc100
from metalearn.data.omniglot import load_omniglot
from metalearn.errors import DataError


@pytest.mark.parametrize("dataset, load, message", [
    ("CIFAR100", load_fc100, r"CIFAR-100 not found under .*download failed \(OSError: Network is "
                             r"unreachable\).*cifar-100-python"),
    ("Omniglot", load_omniglot, r"^Omniglot not found under .* download failed \(OSError: "
                                r"Network is unreachable\)\. Put the extracted folders at"),
])
def test_a_failed_download_is_one_data_error(tmp_path, monkeypatch, dataset, load, message):
    def offline(*args, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(torchvision.datasets, dataset, offline)
    with pytest.raises(DataError, match=message):
        load(tmp_path, download=True)
