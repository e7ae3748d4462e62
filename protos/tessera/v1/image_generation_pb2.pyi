from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GenerateRequest(_message.Message):
    __slots__ = ("prompt", "num_images", "num_candidates", "seed", "temperature", "top_k", "top_p", "guidance_scale", "request_id", "preview_every", "model", "priority")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    NUM_IMAGES_FIELD_NUMBER: _ClassVar[int]
    NUM_CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_SCALE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PREVIEW_EVERY_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    num_images: int
    num_candidates: int
    seed: int
    temperature: float
    top_k: int
    top_p: float
    guidance_scale: float
    request_id: str
    preview_every: int
    model: str
    priority: int
    def __init__(self, prompt: _Optional[str] = ..., num_images: _Optional[int] = ..., num_candidates: _Optional[int] = ..., seed: _Optional[int] = ..., temperature: _Optional[float] = ..., top_k: _Optional[int] = ..., top_p: _Optional[float] = ..., guidance_scale: _Optional[float] = ..., request_id: _Optional[str] = ..., preview_every: _Optional[int] = ..., model: _Optional[str] = ..., priority: _Optional[int] = ...) -> None: ...

class Image(_message.Message):
    __slots__ = ("png", "clip_score", "seed", "candidate_index", "width", "height")
    PNG_FIELD_NUMBER: _ClassVar[int]
    CLIP_SCORE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_INDEX_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    png: bytes
    clip_score: float
    seed: int
    candidate_index: int
    width: int
    height: int
    def __init__(self, png: _Optional[bytes] = ..., clip_score: _Optional[float] = ..., seed: _Optional[int] = ..., candidate_index: _Optional[int] = ..., width: _Optional[int] = ..., height: _Optional[int] = ...) -> None: ...

class StageTiming(_message.Message):
    __slots__ = ("stage", "queue_ms", "compute_ms")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_MS_FIELD_NUMBER: _ClassVar[int]
    stage: str
    queue_ms: float
    compute_ms: float
    def __init__(self, stage: _Optional[str] = ..., queue_ms: _Optional[float] = ..., compute_ms: _Optional[float] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("request_id", "images", "timings", "total_ms", "unknown_words", "reranked", "notes")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_WORDS_FIELD_NUMBER: _ClassVar[int]
    RERANKED_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    images: _containers.RepeatedCompositeFieldContainer[Image]
    timings: _containers.RepeatedCompositeFieldContainer[StageTiming]
    total_ms: float
    unknown_words: _containers.RepeatedScalarFieldContainer[str]
    reranked: bool
    notes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, request_id: _Optional[str] = ..., images: _Optional[_Iterable[_Union[Image, _Mapping]]] = ..., timings: _Optional[_Iterable[_Union[StageTiming, _Mapping]]] = ..., total_ms: _Optional[float] = ..., unknown_words: _Optional[_Iterable[str]] = ..., reranked: _Optional[bool] = ..., notes: _Optional[_Iterable[str]] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("stage", "completed", "total", "preview_png")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    PREVIEW_PNG_FIELD_NUMBER: _ClassVar[int]
    stage: str
    completed: int
    total: int
    preview_png: bytes
    def __init__(self, stage: _Optional[str] = ..., completed: _Optional[int] = ..., total: _Optional[int] = ..., preview_png: _Optional[bytes] = ...) -> None: ...

class GenerateEvent(_message.Message):
    __slots__ = ("progress", "result")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    progress: Progress
    result: GenerateResponse
    def __init__(self, progress: _Optional[_Union[Progress, _Mapping]] = ..., result: _Optional[_Union[GenerateResponse, _Mapping]] = ...) -> None: ...

class GetInfoRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_num_images", "max_num_candidates", "max_message_bytes", "max_prompt_chars")
    MAX_NUM_IMAGES_FIELD_NUMBER: _ClassVar[int]
    MAX_NUM_CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_PROMPT_CHARS_FIELD_NUMBER: _ClassVar[int]
    max_num_images: int
    max_num_candidates: int
    max_message_bytes: int
    max_prompt_chars: int
    def __init__(self, max_num_images: _Optional[int] = ..., max_num_candidates: _Optional[int] = ..., max_message_bytes: _Optional[int] = ..., max_prompt_chars: _Optional[int] = ...) -> None: ...

class Defaults(_message.Message):
    __slots__ = ("temperature", "top_k", "top_p", "guidance_scale", "num_images")
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_SCALE_FIELD_NUMBER: _ClassVar[int]
    NUM_IMAGES_FIELD_NUMBER: _ClassVar[int]
    temperature: float
    top_k: int
    top_p: float
    guidance_scale: float
    num_images: int
    def __init__(self, temperature: _Optional[float] = ..., top_k: _Optional[int] = ..., top_p: _Optional[float] = ..., guidance_scale: _Optional[float] = ..., num_images: _Optional[int] = ...) -> None: ...

class Term(_message.Message):
    __slots__ = ("en", "zh")
    EN_FIELD_NUMBER: _ClassVar[int]
    ZH_FIELD_NUMBER: _ClassVar[int]
    en: str
    zh: str
    def __init__(self, en: _Optional[str] = ..., zh: _Optional[str] = ...) -> None: ...

class Vocabulary(_message.Message):
    __slots__ = ("colors", "shapes", "sizes", "positions")
    COLORS_FIELD_NUMBER: _ClassVar[int]
    SHAPES_FIELD_NUMBER: _ClassVar[int]
    SIZES_FIELD_NUMBER: _ClassVar[int]
    POSITIONS_FIELD_NUMBER: _ClassVar[int]
    colors: _containers.RepeatedCompositeFieldContainer[Term]
    shapes: _containers.RepeatedCompositeFieldContainer[Term]
    sizes: _containers.RepeatedCompositeFieldContainer[Term]
    positions: _containers.RepeatedCompositeFieldContainer[Term]
    def __init__(self, colors: _Optional[_Iterable[_Union[Term, _Mapping]]] = ..., shapes: _Optional[_Iterable[_Union[Term, _Mapping]]] = ..., sizes: _Optional[_Iterable[_Union[Term, _Mapping]]] = ..., positions: _Optional[_Iterable[_Union[Term, _Mapping]]] = ...) -> None: ...

class ShapesFamily(_message.Message):
    __slots__ = ("vocabulary",)
    VOCABULARY_FIELD_NUMBER: _ClassVar[int]
    vocabulary: Vocabulary
    def __init__(self, vocabulary: _Optional[_Union[Vocabulary, _Mapping]] = ...) -> None: ...

class ServerInfo(_message.Message):
    __slots__ = ("model_name", "image_width", "image_height", "text_context", "limits", "defaults", "version", "vocabulary", "model_kind", "image_tokens", "tokenizer", "rerank", "reranker", "details", "precision", "shapes")
    class DetailsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class PrecisionEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    IMAGE_WIDTH_FIELD_NUMBER: _ClassVar[int]
    IMAGE_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    TEXT_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    DEFAULTS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    VOCABULARY_FIELD_NUMBER: _ClassVar[int]
    MODEL_KIND_FIELD_NUMBER: _ClassVar[int]
    IMAGE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_FIELD_NUMBER: _ClassVar[int]
    RERANK_FIELD_NUMBER: _ClassVar[int]
    RERANKER_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    SHAPES_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    image_width: int
    image_height: int
    text_context: int
    limits: Limits
    defaults: Defaults
    version: str
    vocabulary: Vocabulary
    model_kind: str
    image_tokens: int
    tokenizer: str
    rerank: bool
    reranker: str
    details: _containers.ScalarMap[str, str]
    precision: _containers.ScalarMap[str, str]
    shapes: ShapesFamily
    def __init__(self, model_name: _Optional[str] = ..., image_width: _Optional[int] = ..., image_height: _Optional[int] = ..., text_context: _Optional[int] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., defaults: _Optional[_Union[Defaults, _Mapping]] = ..., version: _Optional[str] = ..., vocabulary: _Optional[_Union[Vocabulary, _Mapping]] = ..., model_kind: _Optional[str] = ..., image_tokens: _Optional[int] = ..., tokenizer: _Optional[str] = ..., rerank: _Optional[bool] = ..., reranker: _Optional[str] = ..., details: _Optional[_Mapping[str, str]] = ..., precision: _Optional[_Mapping[str, str]] = ..., shapes: _Optional[_Union[ShapesFamily, _Mapping]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelStatus(_message.Message):
    __slots__ = ("name", "version", "model_kind", "model_name", "state", "load_ms")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_KIND_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LOAD_MS_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    model_kind: str
    model_name: str
    state: str
    load_ms: float
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., model_kind: _Optional[str] = ..., model_name: _Optional[str] = ..., state: _Optional[str] = ..., load_ms: _Optional[float] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelStatus]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelStatus, _Mapping]]] = ...) -> None: ...

class ModelSection(_message.Message):
    __slots__ = ("path", "bpe_path", "vae", "clip", "dtype", "version", "ops")
    PATH_FIELD_NUMBER: _ClassVar[int]
    BPE_PATH_FIELD_NUMBER: _ClassVar[int]
    VAE_FIELD_NUMBER: _ClassVar[int]
    CLIP_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    OPS_FIELD_NUMBER: _ClassVar[int]
    path: str
    bpe_path: str
    vae: str
    clip: str
    dtype: str
    version: str
    ops: _struct_pb2.Struct
    def __init__(self, path: _Optional[str] = ..., bpe_path: _Optional[str] = ..., vae: _Optional[str] = ..., clip: _Optional[str] = ..., dtype: _Optional[str] = ..., version: _Optional[str] = ..., ops: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class LoadModelRequest(_message.Message):
    __slots__ = ("name", "model")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    name: str
    model: ModelSection
    def __init__(self, name: _Optional[str] = ..., model: _Optional[_Union[ModelSection, _Mapping]] = ...) -> None: ...

class UnloadModelRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...
