"""deploy/kubernetes/pcpu-bpf-daemonset.yaml: valid against the Kubernetes schema, offline
(kubernetes-validate from PyPI bundles the schemas), and asking for exactly what the
systemd unit was measured to need."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "deploy" / "kubernetes" / "pcpu-bpf-daemonset.yaml"
UNIT = ROOT / "systemd" / "pcpu-bpf.service"
# The oldest schema the package bundles, and the newest.
VERSIONS = ("1.25.0", kubernetes_validate.latest_version())


def documents() -> list[dict]:
    return [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]


@pytest.mark.parametrize("version", VERSIONS)
def test_valid_against_the_kubernetes_schema(version: str) -> None:
    for document in documents():
        kubernetes_validate.validate(document, version, strict=True)


def test_the_validator_finds_mistakes() -> None:
    (daemonset,) = documents()
    daemonset["spec"]["template"]["spec"]["containers"][0]["ports"][0]["bogus"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(daemonset, VERSIONS[-1], strict=True)


def test_the_same_privileges_as_the_unit() -> None:
    (daemonset,) = documents()
    pod = daemonset["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    security = container["securityContext"]
    ambient = next(
        line.split("=", 1)[1].split()
        for line in UNIT.read_text().splitlines()
        if line.startswith("AmbientCapabilities=")
    )
    assert ["CAP_" + cap for cap in security["capabilities"]["add"]] == ambient
    assert security["capabilities"]["drop"] == ["ALL"]
    assert security["privileged"] is False and security["allowPrivilegeEscalation"] is False
    assert pod["hostPID"] is False and pod["hostNetwork"] is False


def test_the_node_paths_it_mounts() -> None:
    (daemonset,) = documents()
    pod = daemonset["spec"]["template"]["spec"]
    paths = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert sorted(paths.values()) == [
        "/lib/modules",
        "/sys/fs/bpf/pcpu-bpf",
        "/sys/fs/cgroup",
        "/sys/kernel/debug",
        "/sys/kernel/tracing",
        "/usr/src",
    ]
    writable = {paths[n] for n, m in mounts.items() if n in paths and not m.get("readOnly")}
    assert writable == {"/sys/fs/bpf/pcpu-bpf"}  # its pinned set, nothing else of the node
