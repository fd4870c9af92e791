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
import os
from typing import Any, Mapping

import botocore.exceptions
import botocore.loaders
import botocore.session
from botocore.configprovider import ConfiguredEndpointProvider

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


def _endpoints(core: botocore.session.Session, service: str,
               environ: Mapping[str, str] | None) -> ConfiguredEndpointProvider | None:
    """botocore's own lookup of the endpoint configured for `service` (environment, then
    the profile), None when the configuration says to ignore configured endpoints."""
    if core.get_config_variable("ignore_configured_endpoint_urls"):
        return None
    return ConfiguredEndpointProvider(full_config=core.full_config,
                                      scoped_config=core.get_scoped_config(),
                                      client_name=service,
                                      environ=os.environ if environ is None else environ)


def profile_endpoint(profile: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """The endpoint botocore sends S3 requests to when given none: `AWS_ENDPOINT_URL_S3`,
    `AWS_ENDPOINT_URL`, then the profile's `endpoint_url` (its `services` section's `s3`
    one first). config.py takes it as the lowest layer of the endpoint: the cache
    identity recorded `aws:aws` for a profile that sent every request to a MinIO.
    None when nothing sets one, or the profile cannot be read (S3Store says why)."""
    try:
        provider = _endpoints(botocore.session.Session(profile=profile), "s3", environ)
        return None if provider is None else provider.provide()
    except botocore.exceptions.BotoCoreError:
        return None


def service_endpoint(core: botocore.session.Session, service: str,
                     environ: Mapping[str, str] | None = None) -> str | None:
    """The endpoint set for `service` alone: `AWS_ENDPOINT_URL_<SERVICE>` or the profile's
    `services` section (not the global `AWS_ENDPOINT_URL`, which names S3's here)."""
    provider = _endpoints(core, service, environ)
    if provider is None:
        return None
    return (provider._get_endpoint_url_environment_service()  # botocore's own lookups,
            or provider._get_endpoint_url_config_service())    # without the global ones
