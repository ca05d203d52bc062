"""Write manifests/base: the Helm chart rendered with its default values, one file per object.

For users who deploy with ``kubectl apply -k`` instead of Helm. The chart is the source; this
is its output plus a Namespace and a kustomization.yaml listing the files. One value differs:
the router's Secret (API keys, token secret) is the user's to create (``router.existingSecret``),
since the chart generates its keys at install and a generated file would change on every
render. Needs only helm (``make tools`` puts it in .tools/bin) and PyYAML, not turnout itself.

    python scripts/render_manifests.py           # rewrite manifests/base
    python scripts/render_manifests.py --check   # exit 1 if manifests/base is stale
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "turnout"
BASE = ROOT / "manifests" / "base"
RELEASE = "turnout"
NAMESPACE = "turnout-system"
HEADER = (
    "# Generated from helm/turnout (default values) by scripts/render_manifests.py"
    " (`make manifests`); do not edit.\n"
)

# The restricted Pod Security Standard: every pod the chart renders satisfies it.
NAMESPACE_YAML = f"""apiVersion: v1
kind: Namespace
metadata:
  name: {NAMESPACE}
  labels:
    app.kubernetes.io/name: turnout
    pod-security.kubernetes.io/enforce: restricted
    pod-security.kubernetes.io/warn: restricted
"""


ROUTER_SECRET = f"{RELEASE}-router"
KUSTOMIZATION_NOTE = (
    f"# Namespaced objects are in {NAMESPACE} already (helm template --namespace). No\n"
    "# `namespace:` field: kustomize would put the cluster-scoped ClusterKopfPeering in it too.\n"
    "# To install elsewhere, use the Helm chart.\n"
    f"# The router needs the Secret {ROUTER_SECRET} (API keys and the token secret), made once:\n"
    "#   turnout keys create admin --model '*' --action infer,feedback,admin"
    " --file api-keys.yaml  # prints the key\n"
    f"#   kubectl -n {NAMESPACE} create secret generic {ROUTER_SECRET}"
    " --from-file=api-keys.yaml \\\n"
    "#     --from-literal=token-secret=$(openssl rand -hex 32)\n"
)


def helm_binary() -> Path:
    helm = Path(os.environ.get("HELM", ROOT / ".tools" / "bin" / "helm"))
    if not helm.is_file():
        raise SystemExit(f"{helm}: helm is missing; run `make tools` first")
    return helm


def _file_name(doc: dict[str, object]) -> str:
    meta = doc["metadata"]
    assert isinstance(meta, dict)
    kind = re.sub(r"(?<!^)(?=[A-Z])", "-", str(doc["kind"])).lower()
    return f"{kind}-{meta['name']}.yaml"


def render(helm: Path | None = None) -> dict[str, str]:
    """File name -> content of every file manifests/base should hold."""
    out = subprocess.run(
        [
            str(helm or helm_binary()),
            "template",
            RELEASE,
            str(CHART),
            "--namespace",
            NAMESPACE,
            "--include-crds",
            "--set",
            f"router.existingSecret={ROUTER_SECRET}",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    files = {"namespace.yaml": HEADER + NAMESPACE_YAML}
    for chunk in re.split(r"^---\s*$", out, flags=re.MULTILINE):
        doc = yaml.safe_load(chunk)
        if not doc:
            continue
        name = _file_name(doc)
        if name in files:
            raise ValueError(f"two objects would share manifests/base/{name}")
        files[name] = HEADER + chunk.strip("\n") + "\n"
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": list(files),
    }
    files["kustomization.yaml"] = (
        HEADER + KUSTOMIZATION_NOTE + yaml.safe_dump(kustomization, sort_keys=False)
    )
    return files


def stale(files: dict[str, str]) -> list[str]:
    """Files under manifests/base that differ from ``files``, are missing or are extra."""
    present = {p.name for p in BASE.glob("*.yaml")} if BASE.is_dir() else set()
    wrong = [n for n, text in files.items() if n not in present or (BASE / n).read_text() != text]
    return sorted(wrong + sorted(present - set(files)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale files")
    args = parser.parse_args()
    files = render()
    wrong = stale(files)
    if args.check:
        if wrong:
            print("manifests/base is stale (run `make manifests`):", *wrong, sep="\n  ")
            return 1
        return 0
    BASE.mkdir(parents=True, exist_ok=True)
    for path in BASE.glob("*.yaml"):
        if path.name not in files:
            path.unlink()
    for name, text in files.items():
        (BASE / name).write_text(text)
    print(f"wrote {len(files)} files to {BASE.relative_to(ROOT)} ({len(wrong)} changed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
