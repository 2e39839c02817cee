"""Drives recall's MCP server with the official Python SDK and checks what an agent relies on.

    mcp_client.py stdio RECALL_BIN DATABASE_URL
    mcp_client.py http URL TOKEN

Exits 0 when every check holds; an AssertionError names the one that did not.
"""
import asyncio
import json
import sys

import mcp.types as types
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

TOOLS = {"search", "add_document", "update_document", "remove_document", "get_document", "document_history", "status"}


async def call(session, name, args):
    result = await session.call_tool(name, args)
    return result


def ok(result):
    assert not result.is_error, f"tool error: {result.content[0].text}"
    assert result.structured_content is not None, "no structured content"
    assert result.content and result.content[0].text, "no text rendering"
    return result.structured_content


def refused(result, code):
    assert result.is_error, f"expected a refusal with {code}, got {result.structured_content}"
    error = json.loads(result.content[0].text)["error"]
    assert error["code"] == code, error
    assert error["message"], error
    return error


async def scenario(session):
    init = await session.initialize()
    assert init.server_info.name == "recall", init.server_info
    assert init.capabilities.tools is not None and init.capabilities.resources is not None

    tools = {t.name: t for t in (await session.list_tools()).tools}
    assert set(tools) == TOOLS, sorted(tools)
    for tool in tools.values():
        assert len(tool.description or "") > 80, f"{tool.name}: a description written for a model"
        assert tool.output_schema and tool.output_schema.get("type") == "object", tool.name
    search_schema = tools["search"].input_schema
    assert search_schema["required"] == ["query"], search_schema
    k = search_schema["properties"]["k"]
    assert k.get("maximum") == 100 and k.get("minimum") == 1, k
    assert "results" in tools["search"].output_schema["properties"]
    assert tools["search"].annotations.read_only_hint is True

    head = lambda s: s["head"]
    before = head(ok(await call(session, "status", {})))

    docs = {
        "bread": ("Sourdough", "Sourdough bread is leavened by a culture of wild yeast and lactic acid bacteria instead of baker's yeast."),
        "rust": ("Ownership", "Rust's ownership rules let the compiler free memory without a garbage collector."),
        "tea": ("Green tea", "Green tea leaves are steamed or pan-fired soon after picking to stop oxidation."),
    }
    position = 0
    for doc_id, (title, text) in docs.items():
        added = ok(await call(session, "add_document", {"id": doc_id, "scope": "mcp", "title": title, "text": text,
                                                           "metadata": {"kind": "note"}}))
        assert added["status"] == "appended" and added["version"] == 1, added
        position = added["position"]
    again = ok(await call(session, "add_document", {"id": "tea", "scope": "mcp", "title": "Green tea",
                                                       "text": docs["tea"][1], "metadata": {"kind": "note"}}))
    assert again["status"] == "unchanged" and again["position"] is None, again

    question = {"query": "How is sourdough bread leavened?", "scope": "mcp", "k": 3, "wait_for": position}
    first = ok(await call(session, "search", question))
    assert first["results"][0]["document_id"] == "bread", first["results"]
    assert first["position"] >= position
    hit = first["results"][0]
    assert hit["text"] in docs["bread"][1] or docs["bread"][1] in hit["text"], hit
    assert 0 <= hit["char_start"] < hit["char_end"], hit

    # A rejected call appends nothing.
    head_before = head(ok(await call(session, "status", {})))
    refused(await call(session, "add_document", {"id": "empty", "scope": "mcp", "text": ""}), "invalid_document")
    refused(await call(session, "search", {"query": "bread", "k": 0}), "invalid_request")
    refused(await call(session, "get_document", {"id": "nope", "scope": "mcp"}), "not_found")
    bad = await call(session, "add_document", {"scope": "mcp"})
    assert bad.is_error, "a call without the required text"
    assert head(ok(await call(session, "status", {}))) == head_before, "a refused call appended"

    # Update (with the version read), then a stale update is refused.
    doc = ok(await call(session, "get_document", {"id": "bread", "scope": "mcp"}))
    assert doc["version"] == 1 and doc["metadata"] == {"kind": "note"}, doc
    new_text = "Rye bread is dense and dark; it is usually made with a sour starter."
    updated = ok(await call(session, "update_document", {"id": "bread", "scope": "mcp", "title": "Rye",
                                                            "text": new_text, "expected_version": 1}))
    assert updated["version"] == 2, updated
    refused(await call(session, "update_document", {"id": "bread", "scope": "mcp", "text": "x", "expected_version": 1}),
            "version_conflict")

    # The old answer replays with as_of; a live search sees the new text.
    replay = ok(await call(session, "search", {**question, "as_of": first["position"]}))
    assert [(h["document_id"], h["text"]) for h in replay["results"]] == \
        [(h["document_id"], h["text"]) for h in first["results"]], (replay, first)
    live = ok(await call(session, "search", {**question, "wait_for": updated["position"]}))
    assert all(docs["bread"][1] != h["text"] for h in live["results"]), live

    history = ok(await call(session, "document_history", {"id": "bread", "scope": "mcp"}))
    assert [e["version"] for e in history["events"]] == [1, 2], history

    # Documents as resources: read one, list them all across pages.
    read = await session.read_resource("recall://mcp/bread")
    assert read.contents[0].text == new_text, read
    removed = ok(await call(session, "remove_document", {"id": "tea", "scope": "mcp", "expected_version": 1}))
    for i in range(120):
        last = ok(await call(session, "add_document", {"id": f"note-{i:03}", "scope": "many", "text": f"note number {i}"}))
    ok(await call(session, "search", {"query": "note", "scope": "many", "mode": "lexical", "wait_for": last["position"]}))
    uris, cursor, pages = [], None, 0
    while True:
        page = await session.list_resources(params=types.PaginatedRequestParams(cursor=cursor))
        uris += [r.uri for r in page.resources]
        pages += 1
        cursor = page.next_cursor
        if not cursor:
            break
    assert pages >= 2, pages
    assert len(uris) == len(set(uris)) == 122, len(uris)  # bread, rust and 120 notes; tea was removed
    assert "recall://mcp/tea" not in uris and "recall://many/note-119" in uris
    templates = await session.list_resource_templates()
    assert templates.resource_templates[0].uri_template == "recall://{scope}/{id}"

    status = ok(await call(session, "status", {}))
    assert status["head"] == removed["position"] + 120 and status["head"] > before, status
    return {"tools": len(tools), "resources": len(uris), "head": status["head"]}


async def main():
    mode = sys.argv[1]
    if mode == "stdio":
        params = StdioServerParameters(command=sys.argv[2], args=["mcp"], env={"DATABASE_URL": sys.argv[3], "RECALL_LOG": "warn"})
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write) as session:
                summary = await scenario(session)
    else:
        url, token = sys.argv[2], sys.argv[3]
        async with create_mcp_http_client(headers={"Authorization": f"Bearer {token}"}) as http:
            async with streamable_http_client(url, http_client=http) as (read, write):
                async with ClientSession(read, write) as session:
                    summary = await scenario(session)
    print(json.dumps(summary))


asyncio.run(main())
