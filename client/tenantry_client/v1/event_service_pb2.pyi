import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from tenantry_client.v1 import options_pb2 as _options_pb2
from tenantry_client.v1 import tenant_pb2 as _tenant_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TenantEventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TENANT_EVENT_TYPE_UNSPECIFIED: _ClassVar[TenantEventType]
    TENANT_EVENT_TYPE_REGISTERED: _ClassVar[TenantEventType]
    TENANT_EVENT_TYPE_ACTIVATED: _ClassVar[TenantEventType]
    TENANT_EVENT_TYPE_PROVISIONING_FAILED: _ClassVar[TenantEventType]
    TENANT_EVENT_TYPE_PROVISIONING_RETRIED: _ClassVar[TenantEventType]
    TENANT_EVENT_TYPE_UPDATED: _ClassVar[TenantEventType]
    TENANT_EVENT_TYPE_SUSPENDED: _ClassVar[TenantEventType]
    TENANT_EVENT_TYPE_RESUMED: _ClassVar[TenantEventType]
    TENANT_EVENT_TYPE_DELETED: _ClassVar[TenantEventType]
    TENANT_EVENT_TYPE_UNDELETED: _ClassVar[TenantEventType]
    TENANT_EVENT_TYPE_PURGED: _ClassVar[TenantEventType]
    TENANT_EVENT_TYPE_SCHEMA_MIGRATED: _ClassVar[TenantEventType]
    TENANT_EVENT_TYPE_MOVED: _ClassVar[TenantEventType]
TENANT_EVENT_TYPE_UNSPECIFIED: TenantEventType
TENANT_EVENT_TYPE_REGISTERED: TenantEventType
TENANT_EVENT_TYPE_ACTIVATED: TenantEventType
TENANT_EVENT_TYPE_PROVISIONING_FAILED: TenantEventType
TENANT_EVENT_TYPE_PROVISIONING_RETRIED: TenantEventType
TENANT_EVENT_TYPE_UPDATED: TenantEventType
TENANT_EVENT_TYPE_SUSPENDED: TenantEventType
TENANT_EVENT_TYPE_RESUMED: TenantEventType
TENANT_EVENT_TYPE_DELETED: TenantEventType
TENANT_EVENT_TYPE_UNDELETED: TenantEventType
TENANT_EVENT_TYPE_PURGED: TenantEventType
TENANT_EVENT_TYPE_SCHEMA_MIGRATED: TenantEventType
TENANT_EVENT_TYPE_MOVED: TenantEventType

class TenantEvent(_message.Message):
    __slots__ = ("sequence", "tenant_id", "type", "state", "actor", "operation", "request_id", "event_time")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    tenant_id: str
    type: TenantEventType
    state: _tenant_pb2.TenantState
    actor: str
    operation: str
    request_id: str
    event_time: _timestamp_pb2.Timestamp
    def __init__(self, sequence: _Optional[int] = ..., tenant_id: _Optional[str] = ..., type: _Optional[_Union[TenantEventType, str]] = ..., state: _Optional[_Union[_tenant_pb2.TenantState, str]] = ..., actor: _Optional[str] = ..., operation: _Optional[str] = ..., request_id: _Optional[str] = ..., event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListTenantEventsRequest(_message.Message):
    __slots__ = ("tenant_id", "page_size", "page_token")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    page_size: int
    page_token: str
    def __init__(self, tenant_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListTenantEventsResponse(_message.Message):
    __slots__ = ("events", "next_page_token")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[TenantEvent]
    next_page_token: str
    def __init__(self, events: _Optional[_Iterable[_Union[TenantEvent, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class WatchTenantEventsRequest(_message.Message):
    __slots__ = ("tenant_id", "after_sequence")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    after_sequence: int
    def __init__(self, tenant_id: _Optional[str] = ..., after_sequence: _Optional[int] = ...) -> None: ...

class WatchTenantEventsResponse(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: TenantEvent
    def __init__(self, event: _Optional[_Union[TenantEvent, _Mapping]] = ...) -> None: ...
