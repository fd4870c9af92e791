"""The botocore session of a mount, holding only the AWS data an S3 mount uses.

Why: a boto3 session costs a daemon about 13 MiB of resident memory before its first
request (docs/memory.md), most of it botocore's JSON data: the endpoint table of every
AWS service in every partition (endpoints.json, ~7 MiB as Python objects) and the S3
model with its documentation. A mount talks to S3 (and to STS for an assumed role), and
never shows a docstring: this session's loader keeps the endpoints of those two services
only and drops the documentation strings of the service models, and no boto3 (nor its
s3transfer) is imported. The clients are plain botocore clients, the same API.
"""
from __future__ import annotations

import logging
from typing import Any

import botocore.loaders
import botocore.session

log = logging.getLogger(__name__)

#: The services whose endpoints a mount may resolve (S3 itself; STS for AssumeRole).
SERVICES = frozenset({"s3", "sts"})


class SlimLoader(botocore.loaders.Loader):
    """botocore's data loader, trimming what it loads in place (the loader caches what it
    returns: a trimmed copy would leave the whole original cached)."""

    def load_data_with_path(self, name: str) -> tuple[Any, str]:
        data, path = super().load_data_with_path(name)
        if name == "endpoints":
            for partition in data.get("partitions", ()):
                services = partition.get("services", {})
                for service in [s for s in services if s not in SERVICES]:
                    del services[service]
        return data, path

    def load_service_model(self, service_name: str, type_name: str,
                           api_version: str | None = None) -> Any:
        model = super().load_service_model(service_name, type_name, api_version)
        if type_name == "service-2":
            _drop_documentation(model)
        return model


def _drop_documentation(model: dict[str, Any]) -> None:
    """Remove the documentation strings of a service model (docstrings only use them)."""
    model.pop("documentation", None)
    for group in ("operations", "shapes"):
        for item in model.get(group, {}).values():
            item.pop("documentation", None)
            for member in item.get("members", {}).values():
                member.pop("documentation", None)


def session(profile: str | None = None, region: str | None = None) -> botocore.session.Session:
    """A botocore session (`profile`, `region` as boto3.Session takes them) whose data
    loader is a SlimLoader."""
    core = botocore.session.Session(profile=profile)
    default = core.get_component("data_loader")  # nothing loaded yet: only its paths are used
    core.register_component("data_loader", SlimLoader(  # AWS_DATA_PATH, ~/.aws/models too
        extra_search_paths=list(default.search_paths), include_default_search_paths=False))
    if region:
        core.set_config_variable("region", region)
    return core
