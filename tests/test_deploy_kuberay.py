"""deploy/kuberay-rayjob.yaml is a RayJob that KubeRay's own CRD accepts, and it runs ar-ray the way it must.

The schema is KubeRay v1.7.0's RayJob CRD, kept in deploy/schemas/ (ORIGIN.md says where from). The API server
validates a custom resource against the CRD's `openAPIV3Schema` with Kubernetes' rules, which plain JSON Schema
does not know; they are applied here as the API server applies them:

- an object schema with `properties` accepts no other field (what `kubectl apply`'s default field validation,
  `--validate=strict`, does; without it the server would drop a misspelled field silently), unless it says
  `x-kubernetes-preserve-unknown-fields: true`;
- `x-kubernetes-int-or-string` is an integer or a string; `nullable: true` admits null;
- `x-kubernetes-list-type: map` lists have one item per key (`x-kubernetes-list-map-keys`), `set` lists no
  duplicates; `format: int32`/`int64` are range-checked;
- `x-kubernetes-validations` are CEL rules, which this test cannot evaluate: a field that carries them is
  reported as an error, so the manifest must not use one (check such a field with `kubectl apply --dry-run=server`).

Then the rules KubeRay's operator checks itself (ray-operator/controllers/ray/utils/validation.go, the ones
this manifest can break), and what ar-ray needs: the entrypoint is `ar-ray run --address auto` with options
`ar-ray run` accepts, GPUs on the workers, the run dir on one ReadWriteMany volume mounted by the head and
every worker, the cluster deleted after the job, token auth, an image recipe that matches the Ray version.
Last, the README's KubeRay and SkyPilot commands are the ones the two files' headers document, and parse.
"""

from __future__ import annotations

import copy
import hashlib
import json
import posixpath
import re
import shlex
import subprocess
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "deploy" / "kuberay-rayjob.yaml"
SCHEMAS = REPO / "deploy" / "schemas"
CRD = SCHEMAS / "ray.io_rayjobs.yaml"
Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRD is 1.4 MB: the C loader reads it in a second


# ---------------------------------------------------------------- the CRD schema, with Kubernetes' rules

def _structural(schema):
    """A copy of an openAPIV3Schema with Kubernetes' implicit rules made explicit for JSON Schema."""
    if isinstance(schema, list):
        return [_structural(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: (v if k in ("default", "enum", "x-kubernetes-validations") else _structural(v))
           for k, v in schema.items() if k != "properties"}
    if "properties" in schema:  # a property named "type" or "items" is a name here, not a keyword
        out["properties"] = {name: _structural(sub) for name, sub in schema["properties"].items()}
    if out.get("x-kubernetes-int-or-string") and "anyOf" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def _list_type(validator, list_type, instance, schema):
    if not validator.is_type(instance, "array"):
        return
    if list_type == "set":
        seen = []
        for item in instance:
            if item in seen:
                yield jsonschema.ValidationError(f"duplicate item {item!r} in a list of type set")
            seen.append(item)
    elif list_type == "map":
        keys = schema.get("x-kubernetes-list-map-keys", [])
        item_props = schema.get("items", {}).get("properties", {})
        seen = set()
        for item in instance:
            if not isinstance(item, dict):
                continue
            key = {k: item.get(k, item_props.get(k, {}).get("default")) for k in keys}  # a missing key: its default
            if json.dumps(key, sort_keys=True) in seen:
                yield jsonschema.ValidationError(f"duplicate entries for {key} in a list of type map")
            seen.add(json.dumps(key, sort_keys=True))


def _cel(validator, rules, instance, schema):
    yield jsonschema.ValidationError(
        "this field carries CEL rules that this test cannot evaluate ("
        + "; ".join(r.get("rule", "?") for r in rules) + "): leave it out, or check it with "
        "`kubectl apply --dry-run=server`")


_formats = jsonschema.FormatChecker()


@_formats.checks("int32")
def _int32(value) -> bool:
    return not isinstance(value, int) or -2**31 <= value < 2**31


@_formats.checks("int64")
def _int64(value) -> bool:
    return not isinstance(value, int) or -2**63 <= value < 2**63


KubernetesValidator = jsonschema.validators.extend(
    jsonschema.Draft4Validator,  # OpenAPI 3.0's schema object is JSON Schema draft 4/5 with extensions
    {"x-kubernetes-list-type": _list_type, "x-kubernetes-validations": _cel})


@pytest.fixture(scope="module")
def crd() -> dict:
    return yaml.load(CRD.read_text(), Loader=Loader)


@pytest.fixture(scope="module")
def validator(crd) -> jsonschema.protocols.Validator:
    v1 = [v for v in crd["spec"]["versions"] if v["name"] == "v1" and v["served"]]
    assert len(v1) == 1, "the CRD serves ray.io/v1"
    return KubernetesValidator(_structural(v1[0]["schema"]["openAPIV3Schema"]), format_checker=_formats)


def _errors(validator, doc) -> list[str]:
    return sorted(f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
                  for e in validator.iter_errors(doc))


# ---------------------------------------------------------------- the manifest

@pytest.fixture(scope="module")
def docs() -> list[dict]:
    return [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d is not None]


@pytest.fixture(scope="module")
def rayjob(docs) -> dict:
    jobs = [d for d in docs if d.get("kind") == "RayJob"]
    assert len(jobs) == 1, [d.get("kind") for d in docs]
    return jobs[0]


def _groups(rayjob) -> list[tuple[str, dict]]:
    """(name, pod spec) of the head group and every worker group."""
    cluster = rayjob["spec"]["rayClusterSpec"]
    return [("head", cluster["headGroupSpec"]["template"]["spec"])] + [
        (g["groupName"], g["template"]["spec"]) for g in cluster["workerGroupSpecs"]]


def _entrypoint_argv(rayjob) -> list[str]:
    return shlex.split(rayjob["spec"]["entrypoint"])


def _run_options(argv: list[str]) -> dict:
    """`ar-ray run`'s own parser on the entrypoint's options: an unknown or malformed option fails here."""
    from ar_ray.cli.main import main
    assert argv[:2] == ["ar-ray", "run"], argv
    run = main.commands["run"]
    with run.make_context("ar-ray run", argv[2:], resilient_parsing=False) as ctx:
        return dict(ctx.params)


def test_crd_file_is_the_recorded_kuberay_release(crd):
    recorded = re.search(r"sha256 of the file as kept here: `([0-9a-f]{64})`", (SCHEMAS / "ORIGIN.md").read_text())
    assert recorded, "ORIGIN.md records the CRD's sha256"
    assert hashlib.sha256(CRD.read_bytes()).hexdigest() == recorded.group(1), \
        "deploy/schemas/ray.io_rayjobs.yaml differs from the release ORIGIN.md names"
    assert "Apache License" in (SCHEMAS / "LICENSE-kuberay").read_text()
    assert crd["kind"] == "CustomResourceDefinition" and crd["spec"]["names"]["kind"] == "RayJob"


def test_manifest_holds_the_volume_and_the_rayjob(docs, crd):
    assert sorted(d["kind"] for d in docs) == ["PersistentVolumeClaim", "RayJob"]
    job = next(d for d in docs if d["kind"] == "RayJob")
    served = {f"{crd['spec']['group']}/{v['name']}" for v in crd["spec"]["versions"] if v["served"]}
    assert job["apiVersion"] in served
    assert next(d for d in docs if d["kind"] == "PersistentVolumeClaim")["apiVersion"] == "v1"


def test_rayjob_validates_against_kuberays_crd_schema(validator, rayjob):
    assert _errors(validator, rayjob) == []


def test_metadata_name_is_one_kuberay_accepts(rayjob):
    name = rayjob["metadata"]["name"]
    assert len(name) <= 47, "KubeRay: a RayJob name has at most 47 characters (53 minus its cluster suffix)"
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name), "KubeRay: a RayJob name is a DNS-1035 label"


# ---------------------------------------------------------------- KubeRay's own checks (validation.go)

def _version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.match(r"v?(\d+(?:\.\d+)*)", text).group(1).split("."))


def kuberay_spec_problems(job: dict) -> list[str]:
    """The parts of KubeRay's ValidateRayJobSpec/ValidateRayClusterSpec this manifest could run into."""
    spec, problems = job["spec"], []
    if spec.get("ttlSecondsAfterFinished", 0) < 0:
        problems.append("ttlSecondsAfterFinished must be >= 0")
    if not spec.get("shutdownAfterJobFinishes") and spec.get("ttlSecondsAfterFinished", 0) > 0:
        problems.append("ttlSecondsAfterFinished needs shutdownAfterJobFinishes: true")
    if spec.get("suspend") and not spec.get("shutdownAfterJobFinishes"):
        problems.append("suspend needs shutdownAfterJobFinishes: true")
    cluster = spec.get("rayClusterSpec")
    if cluster is None and not spec.get("clusterSelector"):
        problems.append("one of rayClusterSpec or clusterSelector must be set")
    if spec.get("backoffLimit", 0) < 0:
        problems.append("backoffLimit must be >= 0")
    if "runtimeEnvYAML" in spec and not isinstance(yaml.safe_load(spec["runtimeEnvYAML"]), (dict, type(None))):
        problems.append("runtimeEnvYAML must be a YAML mapping")
    if cluster is None:
        return problems
    if not cluster["headGroupSpec"]["template"]["spec"].get("containers"):
        problems.append("the head group needs a container")
    for g in cluster.get("workerGroupSpecs", []):
        if not g["template"]["spec"].get("containers"):
            problems.append(f"worker group {g['groupName']} needs a container")
        if not cluster.get("enableInTreeAutoscaling"):
            if g.get("minReplicas") is None or g.get("maxReplicas") is None:
                problems.append(f"worker group {g['groupName']}: minReplicas and maxReplicas without autoscaling")
            elif not g["minReplicas"] <= g.get("replicas", g["minReplicas"]) <= g["maxReplicas"]:
                problems.append(f"worker group {g['groupName']}: minReplicas <= replicas <= maxReplicas")
    auth = cluster.get("authOptions") or {}
    if auth.get("mode") == "token" and _version(cluster.get("rayVersion") or "0") < (2, 52, 0):
        problems.append("authOptions.mode token needs rayVersion >= 2.52.0")
    if auth.get("enableK8sTokenAuth"):
        problems.append("Kubernetes token auth is not supported for a RayJob")
    return problems


def test_rayjob_passes_kuberays_own_checks(rayjob):
    assert kuberay_spec_problems(rayjob) == []


def test_kuberays_own_checks_can_fail(rayjob):
    job = copy.deepcopy(rayjob)
    job["spec"]["shutdownAfterJobFinishes"] = False
    job["spec"]["rayClusterSpec"]["rayVersion"] = "2.51.0"
    job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] = 99
    assert len(kuberay_spec_problems(job)) == 3, kuberay_spec_problems(job)


# ---------------------------------------------------------------- what ar-ray needs from it

def test_entrypoint_runs_ar_ray_joining_the_jobs_cluster(rayjob):
    argv = _entrypoint_argv(rayjob)
    assert argv[:2] == ["ar-ray", "run"]
    assert not any("$" in a for a in argv), "the submitter's bash would expand $VARS, not the head"
    options = _run_options(argv)
    assert options["address"] == "auto"
    assert options["run_dir"] and posixpath.isabs(options["run_dir"]), "a relative run dir lands in Ray's temp dirs"


def test_run_dir_is_on_one_readwritemany_volume_of_the_head_and_every_worker(rayjob, docs):
    run_dir = _run_options(_entrypoint_argv(rayjob))["run_dir"]
    claims = {}
    for group, pod in _groups(rayjob):
        ray_container = pod["containers"][0]  # KubeRay's Ray container is the first one
        mounts = [m for m in ray_container.get("volumeMounts", [])
                  if posixpath.commonpath([run_dir, m["mountPath"]]) == m["mountPath"].rstrip("/")]
        assert mounts, f"{group}: no volume mounted over the run dir {run_dir}"
        mount = max(mounts, key=lambda m: len(m["mountPath"]))
        assert not mount.get("readOnly"), f"{group}: the run dir's volume is read-only"
        volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        assert "persistentVolumeClaim" in volume, f"{group}: the run dir is on a {sorted(volume)} volume, not a PVC"
        claims[group] = (volume["persistentVolumeClaim"]["claimName"], mount["mountPath"])
    assert len(set(claims.values())) == 1, f"head and workers mount different volumes or paths: {claims}"
    assert len(claims) >= 2
    claim_name = next(iter(claims.values()))[0]
    pvc = [d for d in docs if d["kind"] == "PersistentVolumeClaim" and d["metadata"]["name"] == claim_name]
    assert len(pvc) == 1, f"the claim {claim_name} is not created by the manifest"
    assert "ReadWriteMany" in pvc[0]["spec"]["accessModes"], "pods on several nodes must mount it at once"


def test_workers_request_gpus_and_the_head_none(rayjob):
    workers = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert workers
    for g in workers:
        resources = g["template"]["spec"]["containers"][0]["resources"]
        gpus = resources["limits"]["nvidia.com/gpu"]  # Ray's num-gpus comes from the limit
        assert isinstance(gpus, int) and gpus >= 1, g["groupName"]
        assert resources.get("requests", {}).get("nvidia.com/gpu", gpus) == gpus, "an extended resource's request equals its limit"
        assert g["replicas"] >= 1
    head = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head["resources"].get("limits", {})


def test_cluster_is_deleted_after_the_job(rayjob):
    spec = rayjob["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] >= 0
    assert spec.get("backoffLimit", 0) == 0, "a retry would start a second run into the same run dir"
    env = yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]
    assert int(env["RAY_JOB_STOP_WAIT_TIME_S"]) >= 30, "`ray job stop` gives ar-ray time for its clean stop"


def test_token_auth_is_on_everywhere(rayjob):
    cluster = rayjob["spec"]["rayClusterSpec"]
    assert cluster["authOptions"]["mode"] == "token"
    for group, pod in _groups(rayjob):
        for c in pod["containers"]:
            for e in c.get("env", []):
                assert e["name"] not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN"), \
                    f"{group}: KubeRay sets {e['name']} itself (authOptions)"


def test_image_recipe_matches_ray_version_and_ships_every_package(rayjob):
    text = MANIFEST.read_text()
    base = re.findall(r"^#\s+FROM rayproject/ray:(\d+\.\d+\.\d+)-py3(\d+)-gpu\s*$", text, re.M)
    assert len(base) == 1, "the comment's Dockerfile starts FROM a rayproject/ray release"
    ray_version, py_minor = base[0]
    assert ray_version == rayjob["spec"]["rayClusterSpec"]["rayVersion"]
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    min_minor = int(re.search(r">=\s*3\.(\d+)", pyproject["project"]["requires-python"]).group(1))
    assert int(py_minor) >= min_minor
    copied = set()
    for line in re.findall(r"^#\s+COPY\s+(.*)$", text, re.M):
        copied.update(a for a in line.split()[:-1] if not a.startswith("--"))
    top_level = {p.split(".")[0] for p in pyproject["tool"]["setuptools"]["packages"]}
    assert top_level | {"pyproject.toml", "README.md"} <= copied, f"the image recipe copies only {sorted(copied)}"
    images = {c["image"] for _, pod in _groups(rayjob) for c in pod["containers"]}
    assert len(images) == 1, f"head and workers run different images: {images}"


# ---------------------------------------------------------------- the validation can fail

def _at(doc: dict, path: str):
    node = doc
    for step in path.split("."):
        node = node[int(step)] if step.isdigit() else node[step]
    return node


def _rename(path, new):
    def mutate(job):
        parent, _, key = path.rpartition(".")
        holder = _at(job, parent)
        holder[new] = holder.pop(key)
    return mutate


def _set(path, value):
    def mutate(job):
        parent, _, key = path.rpartition(".")
        holder = _at(job, parent)
        holder[int(key) if key.isdigit() else key] = value
    return mutate


WORKER = "spec.rayClusterSpec.workerGroupSpecs.0"
BROKEN = {
    "misspelled field": (_rename("spec.shutdownAfterJobFinishes", "shutdownAfterJobFinish"),
                         "spec", "'shutdownAfterJobFinish' was unexpected"),
    "misspelled pod field": (_rename(f"{WORKER}.template.spec.containers.0.volumeMounts", "volumeMount"),
                             f"{WORKER}.template.spec.containers.0", "'volumeMount' was unexpected"),
    "ttl as a string": (_set("spec.ttlSecondsAfterFinished", "600"), "spec.ttlSecondsAfterFinished",
                        "is not of type 'integer'"),
    "ttl past int32": (_set("spec.ttlSecondsAfterFinished", 2**31), "spec.ttlSecondsAfterFinished", "int32"),
    "gpus not a quantity": (lambda job: _at(job, f"{WORKER}.template.spec.containers.0.resources.limits").update(
        {"nvidia.com/gpu": "eight"}), f"{WORKER}.template.spec.containers.0.resources.limits.nvidia.com/gpu",
        "does not match"),
    "unknown auth mode": (_set("spec.rayClusterSpec.authOptions.mode", "tokens"),
                          "spec.rayClusterSpec.authOptions.mode", "is not one of"),
    "container without a name": (lambda job: _at(job, f"{WORKER}.template.spec.containers.0").pop("name"),
                                 f"{WORKER}.template.spec.containers.0", "'name' is a required property"),
    "two mounts at one path": (lambda job: _at(job, f"{WORKER}.template.spec.containers.0.volumeMounts").append(
        {"name": "dshm", "mountPath": "/mnt/ar-ray"}), f"{WORKER}.template.spec.containers.0.volumeMounts",
        "duplicate entries"),
    "a field with CEL rules": (_set("spec.managedBy", "someone"), "spec.managedBy", "CEL rules"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_rayjob_is_rejected_where_it_is_broken(validator, rayjob, case):
    mutate, where, said = BROKEN[case]
    job = copy.deepcopy(rayjob)
    mutate(job)
    errors = _errors(validator, job)
    assert any(e.startswith(f"{where}: ") and said in e for e in errors), errors


# ---------------------------------------------------------------- the README shows the same commands

def _commands(text: str) -> list[str]:
    """Shell commands of a block: continuation lines joined, trailing comments and extra spaces dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [" ".join(re.sub(r"\s+#\s.*$", "", ln).split()) for ln in joined.splitlines()
            if ln.strip() and not ln.lstrip().startswith("#")]


def readme_block(launcher: str) -> list[str]:
    """The commands of the README's first bash block after the paragraph that starts `**{launcher}.**`."""
    text = (REPO / "README.md").read_text()
    start = text.index(f"**{launcher}.**")
    block = re.search(r"```bash\n(.*?)```", text[start:], re.S)
    assert block, f"the README's {launcher} paragraph has no bash block"
    return _commands(block.group(1))


def header_commands(path: Path) -> set[str]:
    header = "\n".join(re.sub(r"^#\s?", "", ln) for ln in path.read_text().splitlines() if ln.startswith("#"))
    return set(_commands(re.sub(r"(?m)^\s+", "", header)))


@pytest.mark.parametrize("launcher, path", [("KubeRay", MANIFEST), ("SkyPilot", REPO / "deploy" / "skypilot.yaml")])
def test_readme_shows_the_commands_the_file_documents(launcher, path):
    readme, header = readme_block(launcher), header_commands(path)
    assert readme and not [c for c in readme if c not in header], [c for c in readme if c not in header]
    out = subprocess.run(["bash", "-n"], input="\n".join(readme), capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
