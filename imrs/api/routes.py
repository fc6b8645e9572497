"""The v1 endpoints. Each one parses, calls the library (``imrs.query``, the collection facade,
the expansion engine) and shapes the answer: no search, judging or growth logic lives here."""

import asyncio
import io
import json
import os
import threading
import time
from collections import OrderedDict
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Path, Query, Request, Response, UploadFile
from fastapi.responses import FileResponse, StreamingResponse

from ..layout import SearchHit
from ..progress import Progress
from ..query import Query as ImrsQuery
from ..query import QueryOutcome, encode, grow_term, keep_filter, run_query
from .jobs import FINISHED, JobFn
from .models import (
    SNAPSHOT_NAME,
    DynamicAnswer,
    DynamicGroupOut,
    GrowRequest,
    Health,
    Hit,
    ImageOut,
    IndexState,
    Info,
    Job,
    JobList,
    PruneRequest,
    SearchAnswer,
    SearchRequest,
    SnapshotOut,
    SnapshotRequest,
    Term,
    Verdict,
)
from .problems import PROBLEM_RESPONSES, ApiProblem
from .state import ServerState

JOB_ID = r"^[0-9a-f]{1,16}-[0-9a-f]{8}$"
#: Longest side a query image is decoded at (the encoders look at far less).
QUERY_MAX_SIDE = 1024
THUMB_SIDE = 256
THUMB_CACHE = 512
#: An event stream ends after this long even if its job is still running (the client reconnects).
STREAM_SECONDS = 3600.0


# -- helpers -------------------------------------------------------------------------------------------
def _image_urls(image_id: int) -> dict[str, str]:
    return {"thumbnail": f"/v1/images/{image_id}/thumbnail", "original": f"/v1/images/{image_id}/original"}


def _hit(rank: int, h: SearchHit) -> Hit:
    return Hit(rank=rank, id=h.id, score=round(float(h.score), 4), confidence=h.confidence or "", label=h.label or "",
               source=h.source, why=list(h.why), relpath=h.relpath, **_image_urls(h.id))


def _image_out(r: Any) -> ImageOut:
    return ImageOut(id=r.id, relpath=r.relpath, source=r.source, label=r.label or "", term=r.term,
                    source_url=r.source_url, provider=r.provider, license=r.license, author=r.author, title=r.title,
                    width=r.width, height=r.height, **_image_urls(r.id))


def _answer(state: ServerState, outcome: QueryOutcome, req: SearchRequest, query_desc: dict[str, Any],
            before: dict[str, float]) -> SearchAnswer:
    d = outcome.to_dict()
    d["timings"] = {**{k: round(v, 4) for k, v in before.items()}, **d["timings"]}
    start = (req.page - 1) * req.k
    hits = [_hit(n, h) for n, h in enumerate(outcome.hits[start : start + req.k], start + 1)]
    coll = state.coll
    return SearchAnswer(query=query_desc, page=req.page, k=req.k, hits=hits, verdict=Verdict(**d["verdict"]),
                        terms=[Term(**t) for t in d["terms"]], timings=d["timings"], stages=d["stages"],
                        index=IndexState(images=len(coll.catalog), vectors=len(coll.index),
                                         generation=coll.catalog.generation(), process=os.getpid()))


def _record(state: ServerState, image_id: int) -> Any:
    rec = state.coll.catalog.get(int(image_id))
    if rec is None:
        raise ApiProblem(404, f"no image {image_id} in the collection")
    return rec


def _decode_upload(state: ServerState, data: bytes) -> Any:
    """The bounded decoder (``imrs.imageio``): byte, pixel and time caps, bombs refused."""
    from ..imageio import open_image

    return open_image(data, max_side=QUERY_MAX_SIDE, max_pixels=state.config.max_upload_pixels,
                      max_bytes=state.config.max_upload_bytes).image


def _run_search(state: ServerState, req: SearchRequest, image: Any = None,
                query_desc: dict[str, Any] | None = None, timings: dict[str, float] | None = None) -> SearchAnswer:
    """``timings``: what happened before the pipeline (decoding an upload), reported with its own."""
    timings = dict(timings or {})
    exclude: tuple[int, ...] = ()
    desc = dict(query_desc or {})
    if req.image_id is not None:
        rec = _record(state, req.image_id)
        image, exclude = str(state.coll.abspath(rec.relpath, rec.source)), (rec.id,)
        desc = {"image_id": rec.id}
    elif req.image_url is not None:
        from ..expansion.sources import policy_for
        from ..web.download import fetch_image_bytes

        t0 = time.perf_counter()
        data = fetch_image_bytes(req.image_url, policy_for(state.settings, max_side=QUERY_MAX_SIDE))
        timings["fetch"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        image, desc = _decode_upload(state, data), {"image_url": req.image_url}
        timings["decode"] = time.perf_counter() - t0
    elif image is None:
        desc = {"text": req.text}
    desc.update(k=req.k, page=req.page, where=req.where, qe=req.qe, metadata=req.metadata)
    query = ImrsQuery(text=req.text if image is None else None, image=image, k=req.k * req.page, qe=req.qe,
                      where=req.where or None, metadata=req.metadata, exclude_ids=exclude)
    return _answer(state, run_query(state.coll, query, state.settings), req, desc, timings)


# -- writer jobs ------------------------------------------------------------------------------------------
def job_kinds(state: ServerState) -> dict[str, JobFn]:
    """What each job kind runs: the same library calls as ``imrs expand``, ``imrs index``,
    ``imrs prune`` and ``imrs snapshot``."""
    coll, s = state.coll, state.settings

    def grow(p: dict[str, Any], progress: Progress) -> dict[str, Any]:
        if p.get("image_id") is not None:
            rec = _record(state, int(p["image_id"]))
            query = ImrsQuery(image=str(coll.abspath(rec.relpath, rec.source)), exclude_ids=(rec.id,))
        else:
            query = ImrsQuery(text=p["term"])
        vector = encode(coll, query)
        report = grow_term(coll, p["term"], s, p.get("n"), progress, query_vector=vector,
                           accept=keep_filter(coll, query, vector, s))
        return report.as_dict()

    def index(p: dict[str, Any], progress: Progress) -> dict[str, Any]:
        r = coll.sync(progress=progress)
        return {"summary": r.summary(), "scanned": r.scanned, "added": r.added, "changed": r.changed,
                "removed": r.removed, "unchanged": r.unchanged, "embedded": r.embedded,
                "failed": [{"relpath": a, "reason": b} for a, b in r.failed[:100]],
                "skipped": len(r.skipped), "seconds": round(r.seconds, 3)}

    def prune(p: dict[str, Any], progress: Progress) -> dict[str, Any]:
        from ..expansion import prune as prune_images

        r = prune_images(coll, term=p.get("term"), ids=p.get("ids"))
        return {"summary": r.summary(), "requested": r.requested, "removed": r.removed,
                "files_deleted": r.files_deleted, "missing": list(r.missing)[:1000], "slugs": r.slugs}

    def snapshot_save(p: dict[str, Any], progress: Progress) -> dict[str, Any]:
        m = coll.save_snapshot(p["name"])
        return {"name": m.name, "count": m.count, "created": m.created}

    def snapshot_load(p: dict[str, Any], progress: Progress) -> dict[str, Any]:
        m = coll.load_snapshot(p["name"])
        return {"name": m.name, "count": m.count, "created": m.created}

    return {"grow": grow, "index": index, "prune": prune, "snapshot-save": snapshot_save,
            "snapshot-load": snapshot_load}


# -- the router --------------------------------------------------------------------------------------------
def build_router(box: dict[str, ServerState]) -> APIRouter:
    router = APIRouter(prefix="/v1", responses=PROBLEM_RESPONSES)
    thumbs: OrderedDict[tuple[int, str], bytes] = OrderedDict()
    thumbs_lock = threading.Lock()

    def state() -> ServerState:
        return box["state"]

    def reader(request: Request) -> ServerState:
        st = state()
        st.authorize(request, "read")
        return st

    def writer(request: Request) -> ServerState:
        st = state()
        st.authorize(request, "write")
        return st

    Reader = Annotated[ServerState, Depends(reader)]
    Writer = Annotated[ServerState, Depends(writer)]

    def submit(st: ServerState, request: Request, response: Response, kind: str, params: dict[str, Any]) -> Job:
        job = st.jobs.submit(kind, params, getattr(request.state, "key", None))
        st.runner.wake()
        response.headers["Location"] = f"/v1/jobs/{job['id']}"
        return Job(**job)

    @router.get("/health", response_model=Health, tags=["service"])
    def health() -> Health:
        st = state()
        counts = st.jobs.counts()
        return Health(status="ok", images=len(st.coll.catalog), vectors=len(st.coll.index),
                      jobs_running=counts.get("running", 0), jobs_queued=counts.get("queued", 0))

    @router.get("/info", response_model=Info, tags=["service"])
    def info(st: Reader) -> Info:
        c = st.coll
        c.refresh_if_stale()  # another worker's job may have committed since this one last searched
        return Info(backbone=c.backbone, indexer=c.indexer, images=len(c.catalog), base=c.catalog.count("base"),
                    dynamic=c.catalog.count("dynamic"), labels=len(c.catalog.labels()), vectors=len(c.index),
                    generation=c.catalog.generation(), snapshots=len(c.list_snapshots()))

    @router.post("/search", response_model=SearchAnswer, tags=["search"])
    def search(req: SearchRequest, st: Reader) -> SearchAnswer:
        """Search by text, by an image of the collection or by an image URL (fetched with the same
        guards as web growth); the answer carries the verdict and the proposed web-search terms."""
        return _run_search(st, req)

    @router.post("/search/image", response_model=SearchAnswer, tags=["search"])
    def search_image(st: Reader, file: Annotated[UploadFile, File(description="the query image")],
                     k: Annotated[int, Form(ge=1, le=100)] = 10, page: Annotated[int, Form(ge=1, le=10)] = 1,
                     where: Annotated[str | None, Form(max_length=4000)] = None,
                     qe: Annotated[int | None, Form(ge=0, le=100)] = None) -> SearchAnswer:
        """Search by an uploaded image (multipart/form-data)."""
        cap = st.config.max_upload_bytes
        data = file.file.read(cap + 1)
        if len(data) > cap:
            raise ApiProblem(413, f"uploaded image over {cap // (1 << 20)} MiB")
        if not data:
            raise ApiProblem(422, "the uploaded file is empty")
        t0 = time.perf_counter()
        image = _decode_upload(st, data)
        decode = time.perf_counter() - t0
        req = SearchRequest.model_construct(text=None, image_id=None, image_url=None, k=k, page=page, where=where,
                                            qe=qe, metadata=True)
        return _run_search(st, req, image=image, query_desc={"upload": (file.filename or "")[:200]},
                           timings={"decode": decode})

    @router.get("/images/{image_id}", response_model=ImageOut, tags=["images"])
    def image(image_id: Annotated[int, Path(ge=-(2**63), le=2**63 - 1)], st: Reader) -> ImageOut:
        return _image_out(_record(st, image_id))

    def _etag(rec: Any, path: Any, what: str) -> str:
        try:
            stt = path.stat()
        except OSError:
            raise ApiProblem(404, f"the file of image {rec.id} is gone; re-index the collection") from None
        return f'"{rec.id:x}-{stt.st_mtime_ns:x}-{stt.st_size:x}-{what}"'

    @router.get("/images/{image_id}/thumbnail", tags=["images"],
                responses={200: {"content": {"image/jpeg": {}}, "description": "a JPEG, longest side 256 px"},
                           304: {"description": "not modified"}})
    def thumbnail(image_id: Annotated[int, Path(ge=-(2**63), le=2**63 - 1)], request: Request,
                  st: Reader) -> Response:
        rec = _record(st, image_id)
        path = st.coll.abspath(rec.relpath, rec.source)
        tag = _etag(rec, path, "t")
        headers = {"ETag": tag, "Cache-Control": "private, max-age=3600"}
        if request.headers.get("if-none-match") == tag:
            return Response(status_code=304, headers=headers)
        with thumbs_lock:
            data = thumbs.get((rec.id, tag))
        if data is None:
            from ..imageio import load_image

            buf = io.BytesIO()
            load_image(path, max_side=THUMB_SIDE).save(buf, "JPEG", quality=85)
            data = buf.getvalue()
            with thumbs_lock:
                thumbs[(rec.id, tag)] = data
                while len(thumbs) > THUMB_CACHE:
                    thumbs.popitem(last=False)
        return Response(data, media_type="image/jpeg", headers=headers)

    @router.get("/images/{image_id}/original", tags=["images"],
                responses={200: {"content": {"image/*": {}}, "description": "the catalogued file as it is"},
                           304: {"description": "not modified"}})
    def original(image_id: Annotated[int, Path(ge=-(2**63), le=2**63 - 1)], request: Request,
                 st: Reader) -> Response:
        rec = _record(st, image_id)
        path = st.coll.abspath(rec.relpath, rec.source)  # from the catalog, never from the request
        tag = _etag(rec, path, "o")
        headers = {"ETag": tag, "Cache-Control": "private, max-age=3600"}
        if request.headers.get("if-none-match") == tag:
            return Response(status_code=304, headers=headers)
        return FileResponse(path, headers=headers, filename=path.name, content_disposition_type="inline")

    @router.get("/dynamic", response_model=DynamicAnswer, tags=["collection"])
    def dynamic(st: Reader, term: Annotated[str | None, Query(max_length=200)] = None,
                limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                offset: Annotated[int, Query(ge=0)] = 0) -> DynamicAnswer:
        """The web-grown terms, or (with ``term``) that term's images, paged."""
        from ..expansion import dynamic_groups, list_dynamic

        if term is None:
            groups = [DynamicGroupOut(slug=g.slug, term=g.term, count=g.count) for g in dynamic_groups(st.coll)]
            return DynamicAnswer(groups=groups[offset : offset + limit], images=[])
        recs = list_dynamic(st.coll, term)
        return DynamicAnswer(groups=[], images=[_image_out(r) for r in recs[offset : offset + limit]])

    @router.get("/snapshots", response_model=list[SnapshotOut], tags=["collection"])
    def snapshots(st: Reader) -> list[SnapshotOut]:
        return [SnapshotOut(name=m.name, backbone=m.backbone, indexer=m.indexer, count=m.count, created=m.created)
                for m in st.coll.list_snapshots()]

    @router.post("/jobs/grow", response_model=Job, status_code=202, tags=["jobs"])
    def grow(req: GrowRequest, request: Request, response: Response, st: Writer) -> Job:
        """Grow the collection with web images of a term (typed, or one of the proposed terms)."""
        from ..expansion.terms import clean_term

        if not clean_term(req.term):
            raise ApiProblem(422, "the term is empty: give a word or two to search the web for")
        return submit(st, request, response, "grow", req.model_dump())

    @router.post("/jobs/index", response_model=Job, status_code=202, tags=["jobs"])
    def index(request: Request, response: Response, st: Writer) -> Job:
        """Index the collection's folder incrementally (new and changed files only)."""
        return submit(st, request, response, "index", {})

    @router.post("/jobs/prune", response_model=Job, status_code=202, tags=["jobs"])
    def prune(req: PruneRequest, request: Request, response: Response, st: Writer) -> Job:
        """Remove web-grown images by term or id (the collection's own images are never touched)."""
        return submit(st, request, response, "prune", req.model_dump(exclude_none=True))

    @router.post("/snapshots", response_model=Job, status_code=202, tags=["jobs"])
    def snapshot_save(req: SnapshotRequest, request: Request, response: Response, st: Writer) -> Job:
        return submit(st, request, response, "snapshot-save", {"name": req.name})

    @router.post("/snapshots/{name}/load", response_model=Job, status_code=202, tags=["jobs"])
    def snapshot_load(name: Annotated[str, Path(pattern=SNAPSHOT_NAME)], request: Request, response: Response,
                      st: Writer) -> Job:
        return submit(st, request, response, "snapshot-load", {"name": name})

    @router.get("/jobs", response_model=JobList, tags=["jobs"])
    def jobs(st: Reader, limit: Annotated[int, Query(ge=1, le=200)] = 50) -> JobList:
        return JobList(jobs=[Job(**j) for j in st.jobs.list(limit)])

    def _job(st: ServerState, job_id: str) -> dict[str, Any]:
        job = st.jobs.get(job_id)
        if job is None:
            raise ApiProblem(404, f"no job {job_id}")
        return job

    JobId = Annotated[str, Path(pattern=JOB_ID)]

    @router.get("/jobs/{job_id}", response_model=Job, tags=["jobs"])
    def job(job_id: JobId, st: Reader) -> Job:
        return Job(**_job(st, job_id))

    @router.post("/jobs/{job_id}/cancel", response_model=Job, tags=["jobs"])
    def cancel(job_id: JobId, st: Writer) -> Job:
        _job(st, job_id)
        got = st.jobs.cancel(job_id)
        assert got is not None
        return Job(**got)

    @router.get("/jobs/{job_id}/events", tags=["jobs"],
                responses={200: {"content": {"text/event-stream": {}},
                                 "description": "Server-Sent Events: 'progress' events, then one 'end'"}})
    async def events(job_id: JobId, request: Request, st: Reader) -> StreamingResponse:
        _job(st, job_id)

        async def stream():  # type: ignore[no-untyped-def]
            seq, t_end, last_sent = -1, time.monotonic() + STREAM_SECONDS, time.monotonic()
            while time.monotonic() < t_end:
                job = st.jobs.get(job_id)
                if job is None:
                    return
                if job["seq"] != seq:
                    seq = job["seq"]
                    kind = "end" if job["status"] in FINISHED else "progress"
                    yield f"event: {kind}\nid: {seq}\ndata: {json.dumps(job)}\n\n"
                    last_sent = time.monotonic()
                    if kind == "end":
                        return
                elif time.monotonic() - last_sent > 15:
                    yield ": keep-alive\n\n"
                    last_sent = time.monotonic()
                if await request.is_disconnected():
                    return
                await asyncio.sleep(0.25)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return router

