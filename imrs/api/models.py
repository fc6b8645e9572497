"""The v1 API's request and answer shapes (pydantic models): what the OpenAPI schema shows and what
each endpoint validates; no behaviour."""

from typing import Any

from pydantic import BaseModel, Field, model_validator

SNAPSHOT_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,80}$"


class SearchRequest(BaseModel):
    """Exactly one of ``text``, ``image_id`` (an image of the collection) or ``image_url``."""

    text: str | None = Field(None, max_length=1000)
    image_id: int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    image_url: str | None = Field(None, max_length=2048)
    k: int = Field(10, ge=1, le=100, description="hits per page")
    page: int = Field(1, ge=1, le=10)
    where: str | None = Field(None, max_length=4000, description="filter, e.g. source == 'dynamic'")
    qe: int | None = Field(None, ge=0, le=100, description="alpha query expansion over the top N hits")
    metadata: bool = Field(True, description="text: fuse the collection's labels, file names and captions")

    @model_validator(mode="after")
    def one_query(self) -> "SearchRequest":
        given = [self.text is not None and self.text.strip() != "", self.image_id is not None,
                 self.image_url is not None]
        if sum(given) != 1:
            raise ValueError("give exactly one of text, image_id or image_url")
        return self


class Hit(BaseModel):
    rank: int
    id: int
    score: float
    confidence: str
    label: str
    source: str
    why: list[str]
    relpath: str
    thumbnail: str
    original: str


class Verdict(BaseModel):
    weak: bool
    reason: str
    kind: str
    label: str
    best: float | None
    n_good: int
    source: str
    scores: list[float]
    thresholds: dict[str, Any] | None
    probability: float | None = Field(None, description="the fitted judge's p(covered), when one decided")
    folder: str = Field("", description="the folder the answer came from")
    web: dict[str, Any] | None = Field(None, description="what asking the web said, when it was asked")


class Term(BaseModel):
    term: str
    score: float
    method: str


class IndexState(BaseModel):
    """What answered: the collection's size and catalog generation, and the server process."""

    images: int
    vectors: int
    generation: str
    process: int


class SearchAnswer(BaseModel):
    query: dict[str, Any]
    page: int
    k: int
    hits: list[Hit]
    verdict: Verdict
    terms: list[Term]
    timings: dict[str, float]
    stages: list[str]
    index: IndexState


class GrowRequest(BaseModel):
    term: str = Field(..., min_length=1, max_length=200, description="the web search term (e.g. a proposed one)")
    n: int | None = Field(None, ge=1, le=500, description="web images to add (default: the server's)")
    image_id: int | None = Field(None, ge=-(2**63), le=2**63 - 1,
                                 description="check downloads against this image of the collection, not the term")


class PruneRequest(BaseModel):
    term: str | None = Field(None, min_length=1, max_length=200)
    ids: list[int] | None = Field(None, min_length=1, max_length=10000)

    @model_validator(mode="after")
    def one_selection(self) -> "PruneRequest":
        if (self.term is None) == (self.ids is None):
            raise ValueError("give exactly one of term or ids")
        return self


class SnapshotRequest(BaseModel):
    name: str = Field(..., pattern=SNAPSHOT_NAME)


class JobProgress(BaseModel):
    stage: str
    done: int
    total: int


class Job(BaseModel):
    id: str
    kind: str
    status: str = Field(description="queued, running, done, failed or cancelled")
    params: dict[str, Any]
    created: float
    started: float | None
    finished: float | None
    progress: JobProgress
    ahead: int | None = Field(description="jobs that run before this queued one")
    cancel_requested: bool
    result: dict[str, Any] | None
    error: str | None
    seq: int


class JobList(BaseModel):
    jobs: list[Job]


class Health(BaseModel):
    status: str
    images: int
    vectors: int
    jobs_running: int
    jobs_queued: int


class Info(BaseModel):
    backbone: str
    indexer: str
    images: int
    base: int
    dynamic: int
    labels: int
    vectors: int
    generation: str
    snapshots: int


class DynamicGroupOut(BaseModel):
    slug: str
    term: str
    count: int


class ImageOut(BaseModel):
    id: int
    relpath: str
    source: str
    label: str
    term: str | None = None
    source_url: str | None = None
    provider: str | None = None
    license: str | None = None
    author: str | None = None
    title: str | None = None
    width: int | None = None
    height: int | None = None
    thumbnail: str
    original: str


class DynamicAnswer(BaseModel):
    groups: list[DynamicGroupOut]
    images: list[ImageOut]


class SnapshotOut(BaseModel):
    name: str
    backbone: str
    indexer: str
    count: int
    created: str
