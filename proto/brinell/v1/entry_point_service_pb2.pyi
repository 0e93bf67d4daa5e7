from brinell.v1 import entry_point_pb2 as _entry_point_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class UploadEntryPointMetadata(_message.Message):
    __slots__ = ("entry_point_id", "description", "sha256")
    ENTRY_POINT_ID_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    entry_point_id: str
    description: str
    sha256: str
    def __init__(self, entry_point_id: _Optional[str] = ..., description: _Optional[str] = ..., sha256: _Optional[str] = ...) -> None: ...

class UploadEntryPointRequest(_message.Message):
    __slots__ = ("metadata", "chunk")
    METADATA_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    metadata: UploadEntryPointMetadata
    chunk: bytes
    def __init__(self, metadata: _Optional[_Union[UploadEntryPointMetadata, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class UploadEntryPointResponse(_message.Message):
    __slots__ = ("entry_point", "revision", "created")
    ENTRY_POINT_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    entry_point: _entry_point_pb2.EntryPoint
    revision: _entry_point_pb2.EntryPointRevision
    created: bool
    def __init__(self, entry_point: _Optional[_Union[_entry_point_pb2.EntryPoint, _Mapping]] = ..., revision: _Optional[_Union[_entry_point_pb2.EntryPointRevision, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class GetEntryPointRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetEntryPointResponse(_message.Message):
    __slots__ = ("entry_point",)
    ENTRY_POINT_FIELD_NUMBER: _ClassVar[int]
    entry_point: _entry_point_pb2.EntryPoint
    def __init__(self, entry_point: _Optional[_Union[_entry_point_pb2.EntryPoint, _Mapping]] = ...) -> None: ...

class ListEntryPointsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListEntryPointsResponse(_message.Message):
    __slots__ = ("entry_points", "next_page_token")
    ENTRY_POINTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    entry_points: _containers.RepeatedCompositeFieldContainer[_entry_point_pb2.EntryPoint]
    next_page_token: str
    def __init__(self, entry_points: _Optional[_Iterable[_Union[_entry_point_pb2.EntryPoint, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetEntryPointRevisionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetEntryPointRevisionResponse(_message.Message):
    __slots__ = ("revision",)
    REVISION_FIELD_NUMBER: _ClassVar[int]
    revision: _entry_point_pb2.EntryPointRevision
    def __init__(self, revision: _Optional[_Union[_entry_point_pb2.EntryPointRevision, _Mapping]] = ...) -> None: ...

class ListEntryPointRevisionsRequest(_message.Message):
    __slots__ = ("parent", "page_size", "page_token")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    parent: str
    page_size: int
    page_token: str
    def __init__(self, parent: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListEntryPointRevisionsResponse(_message.Message):
    __slots__ = ("revisions", "next_page_token")
    REVISIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    revisions: _containers.RepeatedCompositeFieldContainer[_entry_point_pb2.EntryPointRevision]
    next_page_token: str
    def __init__(self, revisions: _Optional[_Iterable[_Union[_entry_point_pb2.EntryPointRevision, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
