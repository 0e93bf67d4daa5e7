from brinell.v1 import model_pb2 as _model_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ListJobArtifactsRequest(_message.Message):
    __slots__ = ("job", "path", "recursive")
    JOB_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    RECURSIVE_FIELD_NUMBER: _ClassVar[int]
    job: str
    path: str
    recursive: bool
    def __init__(self, job: _Optional[str] = ..., path: _Optional[str] = ..., recursive: _Optional[bool] = ...) -> None: ...

class ListJobArtifactsResponse(_message.Message):
    __slots__ = ("artifacts",)
    ARTIFACTS_FIELD_NUMBER: _ClassVar[int]
    artifacts: _containers.RepeatedCompositeFieldContainer[_model_pb2.Artifact]
    def __init__(self, artifacts: _Optional[_Iterable[_Union[_model_pb2.Artifact, _Mapping]]] = ...) -> None: ...

class DownloadJobArtifactRequest(_message.Message):
    __slots__ = ("job", "path")
    JOB_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    job: str
    path: str
    def __init__(self, job: _Optional[str] = ..., path: _Optional[str] = ...) -> None: ...

class DownloadJobArtifactResponse(_message.Message):
    __slots__ = ("file", "chunk")
    FILE_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    file: _model_pb2.Artifact
    chunk: bytes
    def __init__(self, file: _Optional[_Union[_model_pb2.Artifact, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...
