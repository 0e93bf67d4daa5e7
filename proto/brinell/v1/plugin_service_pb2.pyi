from brinell.v1 import plugin_pb2 as _plugin_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class UploadPluginMetadata(_message.Message):
    __slots__ = ("sha256",)
    SHA256_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    def __init__(self, sha256: _Optional[str] = ...) -> None: ...

class UploadPluginRequest(_message.Message):
    __slots__ = ("metadata", "chunk")
    METADATA_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    metadata: UploadPluginMetadata
    chunk: bytes
    def __init__(self, metadata: _Optional[_Union[UploadPluginMetadata, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class UploadPluginResponse(_message.Message):
    __slots__ = ("plugin", "version", "created")
    PLUGIN_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    plugin: _plugin_pb2.Plugin
    version: _plugin_pb2.PluginVersion
    created: bool
    def __init__(self, plugin: _Optional[_Union[_plugin_pb2.Plugin, _Mapping]] = ..., version: _Optional[_Union[_plugin_pb2.PluginVersion, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class GetPluginRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetPluginResponse(_message.Message):
    __slots__ = ("plugin",)
    PLUGIN_FIELD_NUMBER: _ClassVar[int]
    plugin: _plugin_pb2.Plugin
    def __init__(self, plugin: _Optional[_Union[_plugin_pb2.Plugin, _Mapping]] = ...) -> None: ...

class ListPluginsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListPluginsResponse(_message.Message):
    __slots__ = ("plugins", "next_page_token")
    PLUGINS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    plugins: _containers.RepeatedCompositeFieldContainer[_plugin_pb2.Plugin]
    next_page_token: str
    def __init__(self, plugins: _Optional[_Iterable[_Union[_plugin_pb2.Plugin, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetPluginVersionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetPluginVersionResponse(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: _plugin_pb2.PluginVersion
    def __init__(self, version: _Optional[_Union[_plugin_pb2.PluginVersion, _Mapping]] = ...) -> None: ...

class ListPluginVersionsRequest(_message.Message):
    __slots__ = ("parent", "page_size", "page_token")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    parent: str
    page_size: int
    page_token: str
    def __init__(self, parent: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListPluginVersionsResponse(_message.Message):
    __slots__ = ("versions", "next_page_token")
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[_plugin_pb2.PluginVersion]
    next_page_token: str
    def __init__(self, versions: _Optional[_Iterable[_Union[_plugin_pb2.PluginVersion, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ListPluginTasksRequest(_message.Message):
    __slots__ = ("parent",)
    PARENT_FIELD_NUMBER: _ClassVar[int]
    parent: str
    def __init__(self, parent: _Optional[str] = ...) -> None: ...

class ListPluginTasksResponse(_message.Message):
    __slots__ = ("tasks",)
    TASKS_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[_plugin_pb2.Task]
    def __init__(self, tasks: _Optional[_Iterable[_Union[_plugin_pb2.Task, _Mapping]]] = ...) -> None: ...
