"""OpenAPI 3.1 document for the REST API that Envoy's grpc_json_transcoder exposes.

Reads the FileDescriptorSet written by `buf build` (imports and source info included) and
describes every method of an `energymesh.*` service that carries a google.api.http rule, with
schemas in the proto3 JSON mapping. Output is deterministic so `make gen-check` can diff it.

    python -m services.kernel.openapi <descriptor.binpb> <out.json>
"""

from __future__ import annotations

import copy
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from google.api import annotations_pb2, field_behavior_pb2
from google.protobuf import descriptor_pb2

Json = dict[str, Any]
FD = descriptor_pb2.FieldDescriptorProto
Method = descriptor_pb2.MethodDescriptorProto

SCALARS: dict[int, Json] = {
    FD.TYPE_DOUBLE: {"type": "number", "format": "double"},
    FD.TYPE_FLOAT: {"type": "number", "format": "float"},
    FD.TYPE_INT32: {"type": "integer", "format": "int32"},
    FD.TYPE_SINT32: {"type": "integer", "format": "int32"},
    FD.TYPE_SFIXED32: {"type": "integer", "format": "int32"},
    FD.TYPE_UINT32: {"type": "integer", "format": "uint32"},
    FD.TYPE_FIXED32: {"type": "integer", "format": "uint32"},
    FD.TYPE_INT64: {"type": "string", "format": "int64"},
    FD.TYPE_SINT64: {"type": "string", "format": "int64"},
    FD.TYPE_SFIXED64: {"type": "string", "format": "int64"},
    FD.TYPE_UINT64: {"type": "string", "format": "uint64"},
    FD.TYPE_FIXED64: {"type": "string", "format": "uint64"},
    FD.TYPE_BOOL: {"type": "boolean"},
    FD.TYPE_STRING: {"type": "string"},
    FD.TYPE_BYTES: {"type": "string", "format": "byte"},
}
_WRAPPERS = {"Double": FD.TYPE_DOUBLE, "Float": FD.TYPE_FLOAT, "Int64": FD.TYPE_INT64,
             "UInt64": FD.TYPE_UINT64, "Int32": FD.TYPE_INT32, "UInt32": FD.TYPE_UINT32,
             "Bool": FD.TYPE_BOOL, "String": FD.TYPE_STRING, "Bytes": FD.TYPE_BYTES}  # fmt: skip
# Well-known types have their own JSON form and are inlined rather than put in components.
WELL_KNOWN: dict[str, Json] = {
    ".google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    ".google.protobuf.Duration": {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]+)?s$"},
    ".google.protobuf.FieldMask": {"type": "string", "format": "field-mask"},
    ".google.protobuf.Struct": {"type": "object", "additionalProperties": True},
    ".google.protobuf.Value": {},
    ".google.protobuf.ListValue": {"type": "array", "items": {}},
    ".google.protobuf.Empty": {"type": "object"},
    ".google.protobuf.Any": {
        "type": "object",
        "properties": {"@type": {"type": "string"}},
        "required": ["@type"],
        "additionalProperties": True,
    },
    **{f".google.protobuf.{k}Value": SCALARS[t] for k, t in _WRAPPERS.items()},
}
HTTP_BODY = ".google.api.HttpBody"
REF = "#/components/schemas/"
ERROR = "#/components/responses/Error"
JSON = "application/json"
PATH_PARAM = re.compile(r"\{([^}=]+)(?:=([^}]*))?\}")  # {user.user_id} or {name=projects/*}
OPENAPI_VERBS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
# Written out rather than read from google/rpc/status.proto, which a descriptor set may lack.
STATUS: Json = {
    "type": "object",
    "description": "A gRPC status; the HTTP status code is derived from `code`.",
    "properties": {
        "code": {"type": "integer", "format": "int32", "description": "A google.rpc.Code value."},
        "message": {"type": "string", "description": "Developer-facing English message."},
        "details": {
            "type": "array",
            "items": WELL_KNOWN[".google.protobuf.Any"],
            "description": "Typed details such as google.rpc.ErrorInfo, each naming its `@type`.",
        },
    },
}

DESCRIPTION = """\
REST view of the EnergyMesh gRPC services, served by Envoy's gRPC-JSON transcoder.

Bodies use the proto3 JSON mapping: lowerCamelCase names, 64-bit integers as strings, enums as
value names, timestamps as RFC 3339. Fields holding their default value (0, "", false, empty
list) may be omitted from responses. Errors are google.rpc.Status objects whose `details` carry
google.rpc.ErrorInfo (with a stable energymesh.type.v1.ErrorReason), BadRequest or RetryInfo.
"""
BEARER = """\
Access token returned by /v1/auth:register, /v1/auth:login and /v1/auth:refresh. Declared for
every operation; the public ones (their descriptions say "Public") ignore it."""


def _clean(comment: str) -> str:
    lines = [line.removeprefix(" ").rstrip() for line in comment.strip("\n").splitlines()]
    return "\n".join(lines).strip()


def _doc(obj: Json, doc: str | None) -> Json:
    if doc:
        obj["description"] = doc
    return obj


def _behavior(f: descriptor_pb2.FieldDescriptorProto) -> set[int]:
    return set(f.options.Extensions[field_behavior_pb2.field_behavior])


def _segments_regex(segments: str) -> str:
    wild = {"*": "[^/]+", "**": ".+"}
    return "^" + "/".join(wild.get(s, re.escape(s)) for s in segments.split("/")) + "$"


def _summary(doc: str) -> str:
    paragraph = doc.split("\n\n")[0].replace("\n", " ")
    return paragraph.split(". ")[0].rstrip(".")


class Generator:
    """Indexes a FileDescriptorSet and turns its HTTP-annotated methods into an OpenAPI document."""

    def __init__(self, fds: descriptor_pb2.FileDescriptorSet) -> None:
        self.messages: dict[str, descriptor_pb2.DescriptorProto] = {}
        self.enums: dict[str, descriptor_pb2.EnumDescriptorProto] = {}
        self.docs: dict[str, str] = {}  # keyed by full name; fields and enum values appended
        self.schemas: Json = {"google.rpc.Status": copy.deepcopy(STATUS)}
        for fd in fds.file:
            self._index(fd)
        self.services = [
            (f".{fd.package}.{s.name}", s)
            for fd in fds.file
            if fd.package.startswith("energymesh.")
            for s in fd.service
        ]
        self.requests = {m.input_type for _, s in self.services for m in s.method}

    def _index(self, fd: descriptor_pb2.FileDescriptorProto) -> None:
        locs = {tuple(loc.path): loc for loc in fd.source_code_info.location}

        def doc(name: str, path: tuple[int, ...]) -> None:
            loc = locs.get(path)
            if loc and (text := _clean(loc.leading_comments or loc.trailing_comments)):
                self.docs[name] = text

        def enums(items: Any, scope: str, path: tuple[int, ...]) -> None:
            for i, e in enumerate(items):
                name = f"{scope}.{e.name}"
                self.enums[name] = e
                doc(name, (*path, i))
                for j, v in enumerate(e.value):
                    doc(f"{name}.{v.name}", (*path, i, 2, j))

        def messages(items: Any, scope: str, path: tuple[int, ...]) -> None:
            for i, m in enumerate(items):
                name, here = f"{scope}.{m.name}", (*path, i)
                self.messages[name] = m
                doc(name, here)
                for j, f in enumerate(m.field):
                    doc(f"{name}.{f.name}", (*here, 2, j))
                messages(m.nested_type, name, (*here, 3))
                enums(m.enum_type, name, (*here, 4))

        scope = f".{fd.package}" if fd.package else ""
        messages(fd.message_type, scope, (4,))
        enums(fd.enum_type, scope, (5,))
        for i, s in enumerate(fd.service):
            doc(f"{scope}.{s.name}", (6, i))
            for j, m in enumerate(s.method):
                doc(f"{scope}.{s.name}.{m.name}", (6, i, 2, j))

    # --- schemas ------------------------------------------------------------------------------

    def ref(self, type_name: str) -> Json:
        if type_name in WELL_KNOWN:
            return copy.deepcopy(WELL_KNOWN[type_name])
        key = type_name.lstrip(".")
        if key not in self.schemas:
            self.schemas[key] = {}  # placeholder: messages may be recursive
            if type_name in self.enums:
                self.schemas[key] = self.enum_schema(type_name)
            else:
                self.schemas[key] = self.message_schema(type_name)
        return {"$ref": REF + key}

    def enum_schema(self, name: str) -> Json:
        values = [v.name for v in self.enums[name].value]
        lines = [
            f"- `{v}`: {self.docs[f'{name}.{v}']}" for v in values if f"{name}.{v}" in self.docs
        ]
        doc = "\n\n".join(filter(None, [self.docs.get(name, ""), "\n".join(lines)]))
        return _doc({"type": "string", "enum": values}, doc)

    def field_schema(self, f: descriptor_pb2.FieldDescriptorProto) -> Json:
        entry = self.messages.get(f.type_name)
        if entry is not None and entry.options.map_entry:
            return {"type": "object", "additionalProperties": self.field_schema(entry.field[1])}
        is_named = f.type in (FD.TYPE_MESSAGE, FD.TYPE_ENUM)
        schema = self.ref(f.type_name) if is_named else dict(SCALARS[f.type])
        return {"type": "array", "items": schema} if f.label == FD.LABEL_REPEATED else schema

    def message_schema(self, name: str, skip: frozenset[str] = frozenset()) -> Json:
        properties: Json = {}
        required: list[str] = []
        for f in self.messages[name].field:
            if f.name in skip:
                continue
            schema = _doc(self.field_schema(f), self.docs.get(f"{name}.{f.name}"))
            behavior = _behavior(f)
            if field_behavior_pb2.OUTPUT_ONLY in behavior:
                schema["readOnly"] = True
            if field_behavior_pb2.INPUT_ONLY in behavior:
                schema["writeOnly"] = True
            if field_behavior_pb2.REQUIRED in behavior and name in self.requests:
                required.append(f.json_name)
            properties[f.json_name] = schema
        schema = {"type": "object", "properties": properties}
        if required:
            schema["required"] = required
        return _doc(schema, self.docs.get(name))

    # --- operations ---------------------------------------------------------------------------

    def resolve(self, message: str, path: str) -> tuple[str, descriptor_pb2.FieldDescriptorProto]:
        """The doc key and descriptor of a dotted field path such as `user.user_id`."""
        owner, field = message, None
        for part in path.split("."):
            if field is not None:
                owner = field.type_name
            fields = self.messages[owner].field if owner in self.messages else []
            field = next((f for f in fields if f.name == part), None)
            if field is None:
                raise SystemExit(f"openapi: {message} has no field {path!r}")
        assert field is not None
        return f"{owner}.{field.name}", field

    def query(
        self, message: str, prefix: str, bound: set[str], seen: frozenset[str]
    ) -> Iterator[Json]:
        """Fields bound neither to the path nor to the body, flattened with dotted names."""
        for f in self.messages[message].field:
            name = prefix + f.name
            if name in bound:
                continue
            if f.type == FD.TYPE_MESSAGE:
                wkt = WELL_KNOWN.get(f.type_name)
                if wkt is None:  # a plain message: flatten it unless repeated, a map or a cycle
                    singular = f.label != FD.LABEL_REPEATED and f.type_name not in seen
                    if singular and not self.messages[f.type_name].options.map_entry:
                        yield from self.query(f.type_name, f"{name}.", bound, seen | {f.type_name})
                    continue
                if wkt.get("type") in (None, "object", "array"):
                    continue  # Struct, Value, ListValue, Any, Empty: no query-string form
            param: Json = {"name": name, "in": "query", "schema": self.field_schema(f)}
            if field_behavior_pb2.REQUIRED in _behavior(f):
                param["required"] = True
            yield _doc(param, self.docs.get(f"{message}.{f.name}"))

    def operation(
        self, service: str, method: Method, rule: Any, op_id: str
    ) -> tuple[str, str, Json]:
        """The path, verb and OpenAPI operation of one binding (HttpRule) of a method."""
        kind = rule.WhichOneof("pattern")
        custom = kind == "custom"
        verb = rule.custom.kind.lower() if custom else kind
        template = rule.custom.path if custom else getattr(rule, kind)
        request, doc = method.input_type, self.docs.get(f"{service}.{method.name}")
        matches = list(PATH_PARAM.finditer(template))
        names = [m[1] for m in matches]
        parameters: list[Json] = []
        for name, segments in (m.groups() for m in matches):
            key, field = self.resolve(request, name)
            schema = self.field_schema(field)
            if segments:  # {name=things/*}: the value spans several path segments
                schema["pattern"] = _segments_regex(segments)
            param = {"name": name, "in": "path", "required": True, "schema": schema}
            parameters.append(_doc(param, self.docs.get(key)))
        operation: Json = {
            "operationId": op_id,
            "tags": [service.rsplit(".", 1)[1]],
            "responses": {"200": self.response(method, rule), "default": {"$ref": ERROR}},
        }
        body_type, body = request, {}
        if rule.body == "*" and request != HTTP_BODY:  # all fields but the top-level path ones
            top = frozenset(n for n in names if "." not in n)
            body = self.message_schema(request, top) if top else self.ref(request)
        elif rule.body and rule.body != "*":
            key, field = self.resolve(request, rule.body)
            body_type, body = field.type_name, _doc(self.field_schema(field), self.docs.get(key))
        if rule.body:
            content = self.content(body_type, body, method.client_streaming)
            operation["requestBody"] = {"required": True} | content
        if rule.body != "*":
            parameters += self.query(request, "", {*names, rule.body}, frozenset({request}))
        if parameters:
            operation["parameters"] = parameters
        if doc:
            operation |= {"summary": _summary(doc), "description": doc}
        return PATH_PARAM.sub(r"{\1}", template), verb, operation

    def response(self, method: Method, rule: Any) -> Json:
        output, schema = method.output_type, None
        if rule.response_body:
            field = self.resolve(output, rule.response_body)[1]
            output, schema = field.type_name, self.field_schema(field)
        if schema is None and output != HTTP_BODY:
            schema = self.ref(output)
        return {"description": "OK"} | self.content(output, schema or {}, method.server_streaming)

    @staticmethod
    def content(type_name: str, schema: Json, stream: bool) -> Json:
        if type_name == HTTP_BODY:  # google.api.HttpBody: raw bytes of any content type
            return {"content": {"*/*": {}}}
        if stream:  # the transcoder streams messages as elements of one JSON array
            schema = {"type": "array", "items": schema}
        return {"content": {JSON: {"schema": schema}}}

    def document(self) -> Json:
        paths: dict[str, Json] = {}
        tags = []
        for service, svc in self.services:
            tags.append(_doc({"name": svc.name}, self.docs.get(service)))
            for method in svc.method:
                if not method.options.HasExtension(annotations_pb2.http):
                    continue
                rule = method.options.Extensions[annotations_pb2.http]
                op_id = f"{svc.name}_{method.name}"
                bindings = [(rule, op_id)] + [
                    (b, f"{op_id}_{i}") for i, b in enumerate(rule.additional_bindings, 1)
                ]
                for binding, binding_id in bindings:
                    path, verb, operation = self.operation(service, method, binding, binding_id)
                    if verb not in OPENAPI_VERBS:
                        print(f"openapi: skipped {binding_id}: {verb.upper()}", file=sys.stderr)
                        continue
                    if verb in paths.setdefault(path, {}):
                        raise SystemExit(f"openapi: {verb.upper()} {path} is bound twice")
                    paths[path][verb] = operation
        for name in [*self.messages, *self.enums]:  # shared types, e.g. those errors carry
            is_map = name in self.messages and self.messages[name].options.map_entry
            if name.startswith(".energymesh.type.") and not is_map:
                self.ref(name)
        error = {
            "description": "A google.rpc.Status.",
            "content": {JSON: {"schema": self.ref(".google.rpc.Status")}},
        }
        bearer = {"type": "http", "scheme": "bearer", "bearerFormat": "JWT", "description": BEARER}
        return {
            "openapi": "3.1.0",
            "info": {"title": "EnergyMesh API", "version": "v1", "description": DESCRIPTION},
            "tags": sorted(tags, key=lambda t: str(t["name"])),
            "paths": paths,
            "security": [{"bearerAuth": []}],
            "components": {
                "schemas": self.schemas,
                "responses": {"Error": error},
                "securitySchemes": {"bearerAuth": bearer},
            },
        }


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m services.kernel.openapi DESCRIPTOR_SET OUT_JSON", file=sys.stderr)
        return 2
    fds = descriptor_pb2.FileDescriptorSet.FromString(Path(args[0]).read_bytes())
    document = Generator(fds).document()
    text = json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    Path(args[1]).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
