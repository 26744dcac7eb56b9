"""The code location's executor and the tags that route engine-heavy steps, chosen from the
environment so one image serves a laptop (in-process: one engine load serves every stage), a
Celery cluster (GPU steps on their own queue) and Kubernetes (GPU steps in GPU pods)."""

import json
import os
from collections.abc import Mapping

from dagster import ExecutorDefinition, in_process_executor, multiprocess_executor

IN_PROCESS, MULTIPROCESS, CELERY, K8S = "in_process", "multiprocess", "celery", "k8s"
DEFAULT_BROKER = "redis://127.0.0.1:6379/0"
DEFAULT_CPU_QUEUE = "dagster"  # dagster-celery's own default queue
DEFAULT_GPU_QUEUE = "gpu"
CELERY_QUEUE_TAG = "dagster-celery/queue"
K8S_CONFIG_TAG = "dagster-k8s/config"
# One GPU per generation step pod, allowed onto nodes tainted for GPUs; override the whole
# value with LPT_K8S_GPU_STEP_CONFIG (JSON), e.g. to add a node selector.
DEFAULT_K8S_GPU_STEP_CONFIG = {
    "container_config": {"resources": {"limits": {"nvidia.com/gpu": "1"}, "requests": {"nvidia.com/gpu": "1"}}},
    "pod_spec_config": {"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]},
}


def _get(env: Mapping[str, str], name: str) -> str:
    return env.get(name, "").strip()


def _secret(env: Mapping[str, str], name: str, default: str) -> str | dict:
    """A URL may hold a password: pass set variables by name (`env:`) so the run config the UI
    shows never contains them; the executor reads them when the run starts."""
    return {"env": name} if _get(env, name) else default


def cpu_queue(env: Mapping[str, str] = os.environ) -> str:
    return _get(env, "LPT_CELERY_QUEUE") or DEFAULT_CPU_QUEUE


def gpu_queue(env: Mapping[str, str] = os.environ) -> str:
    return _get(env, "LPT_CELERY_GPU_QUEUE") or DEFAULT_GPU_QUEUE


def celery_config(env: Mapping[str, str] = os.environ) -> dict:
    """dagster-celery executor config; workers must use the same broker and backend. A Redis
    broker doubles as the results backend unless LPT_CELERY_BACKEND names another."""
    broker = _get(env, "LPT_CELERY_BROKER") or DEFAULT_BROKER
    if _get(env, "LPT_CELERY_BACKEND"):
        backend: str | dict = {"env": "LPT_CELERY_BACKEND"}
    elif broker.startswith(("redis://", "rediss://")):
        backend = _secret(env, "LPT_CELERY_BROKER", DEFAULT_BROKER)
    else:
        backend = "rpc://"
    config: dict = {
        "broker": _secret(env, "LPT_CELERY_BROKER", DEFAULT_BROKER),
        "backend": backend,
        "config_source": {"task_default_queue": cpu_queue(env)},
    }
    include = [m.strip() for m in _get(env, "LPT_CELERY_INCLUDE").split(",") if m.strip()]
    if include:
        config["include"] = include
    return config


def gpu_op_tags(env: Mapping[str, str] = os.environ) -> dict[str, str]:
    """Tags for engine-heavy steps: Celery sends them to the GPU workers' queue and the k8s
    executor gives their pods a GPU; every other executor ignores both."""
    raw = _get(env, "LPT_K8S_GPU_STEP_CONFIG")
    try:
        k8s = json.loads(raw) if raw else DEFAULT_K8S_GPU_STEP_CONFIG
    except json.JSONDecodeError as error:
        raise ValueError(f"LPT_K8S_GPU_STEP_CONFIG is not valid JSON: {error}") from error
    return {CELERY_QUEUE_TAG: gpu_queue(env), K8S_CONFIG_TAG: json.dumps(k8s, sort_keys=True)}


def executor_from_env(env: Mapping[str, str] = os.environ) -> ExecutorDefinition:
    """LPT_EXECUTOR = in_process (default) | multiprocess | celery | k8s."""
    kind = _get(env, "LPT_EXECUTOR") or IN_PROCESS
    if kind == IN_PROCESS:
        return in_process_executor
    if kind == MULTIPROCESS:
        limit = _get(env, "LPT_MAX_CONCURRENT") or "0"
        if not limit.isdigit():
            raise ValueError(f"LPT_MAX_CONCURRENT must be a whole number, got {limit!r}")
        return multiprocess_executor.configured({"max_concurrent": int(limit)}, name=MULTIPROCESS)
    if kind == CELERY:
        try:
            from dagster_celery import celery_executor
        except ImportError as error:
            raise ImportError("LPT_EXECUTOR=celery needs dagster-celery: pip install -e '.[cluster]'") from error
        return celery_executor.configured(celery_config(env), name=CELERY)
    if kind == K8S:
        try:
            from dagster_k8s import k8s_job_executor
        except ImportError as error:
            raise ImportError("LPT_EXECUTOR=k8s needs dagster-k8s: pip install -e '.[k8s]'") from error
        return k8s_job_executor  # image, namespace and env come from the K8sRunLauncher
    raise ValueError(f"LPT_EXECUTOR must be one of {IN_PROCESS}, {MULTIPROCESS}, {CELERY}, {K8S}; got {kind!r}")
