"""The minibox-oci fixtures (a bundle, a private --root, a subreaper) for the OCI probes here."""

from tests.oci.conftest import oci, oci_rootfs  # noqa: F401  (fixtures, found by name)
