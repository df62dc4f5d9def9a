"""Which right each route needs, over which namespace, and which bodies it takes.

One entry per (method, route template). The access middleware (:mod:`api.access`)
applies it, the OpenAPI description is annotated from it, and a test fails if the app
has a route without an entry. A route missing here anyway needs an admin key over every
namespace: forgetting an entry locks a route, it never opens one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

JSON = "application/json"
ARROW_STREAM = "application/vnd.apache.arrow.stream"
MULTIPART = "multipart/form-data"


@dataclass(frozen=True)
class Rule:
    """``right``: what the credential needs (None: a public route).
    ``scope``: ``ns`` the namespace in the path; ``job`` the namespace of the job in the
    path; ``list`` any credential (the route shows only what it may see); ``all`` every
    namespace; ``public`` nothing.
    ``media``: content types a request body may have (a body of another type is 415)."""

    right: Literal["read", "write", "admin"] | None
    scope: Literal["ns", "job", "list", "all", "public"]
    media: tuple[str, ...] = ()


RULES: dict[tuple[str, str], Rule] = {
    ("GET", "/healthz"): Rule(None, "public"),
    ("GET", "/v1/namespaces"): Rule("read", "list"),
    ("GET", "/v1/namespaces/{ns}"): Rule("read", "ns"),
    ("PUT", "/v1/namespaces/{ns}"): Rule("admin", "ns", (JSON,)),
    ("DELETE", "/v1/namespaces/{ns}"): Rule("admin", "ns"),
    ("POST", "/v1/namespaces/{ns}/documents"): Rule("write", "ns", (JSON, ARROW_STREAM)),
    ("POST", "/v1/namespaces/{ns}/documents/delete"): Rule("write", "ns", (JSON,)),
    ("GET", "/v1/namespaces/{ns}/documents/{doc_id:path}"): Rule("read", "ns"),
    ("GET", "/v1/namespaces/{ns}/documents"): Rule("read", "ns"),
    ("POST", "/v1/namespaces/{ns}/documents/get"): Rule("read", "ns", (JSON,)),
    ("POST", "/v1/namespaces/{ns}/files"): Rule("write", "ns", (MULTIPART,)),
    ("POST", "/v1/namespaces/{ns}/index"): Rule("write", "ns", (JSON,)),
    ("POST", "/v1/namespaces/{ns}/query"): Rule("read", "ns", (JSON,)),
    ("POST", "/v1/namespaces/{ns}/rag"): Rule("read", "ns", (JSON,)),
    ("POST", "/v1/namespaces/{ns}/warm"): Rule("read", "ns", (JSON,)),
    ("GET", "/v1/namespaces/{ns}/versions"): Rule("read", "ns"),
    ("GET", "/v1/namespaces/{ns}/tags"): Rule("read", "ns"),
    ("PUT", "/v1/namespaces/{ns}/tags/{name}"): Rule("write", "ns", (JSON,)),
    ("DELETE", "/v1/namespaces/{ns}/tags/{name}"): Rule("write", "ns"),
    ("POST", "/v1/namespaces/{ns}/restore"): Rule("admin", "ns", (JSON,)),
    ("GET", "/v1/jobs/{job_id}"): Rule("read", "job"),
    ("DELETE", "/v1/jobs/{job_id}"): Rule("write", "job"),
}

# A route the table does not know (see the module docstring).
UNLISTED = Rule("admin", "all")
# A path no route matches: any valid credential, then the router's 404/405.
UNMATCHED = Rule("read", "list")


def rule_for(method: str, template: str) -> Rule:
    return RULES.get(("GET" if method == "HEAD" else method, template), UNLISTED)
