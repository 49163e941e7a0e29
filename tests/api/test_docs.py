"""/docs works offline: Swagger UI comes from this server, never from a CDN."""

from __future__ import annotations

import re

from tests.conftest import LiveServer


def test_docs_page_references_no_external_host_and_its_assets_load(live: LiveServer) -> None:
    client = live.client()
    page = client.get("/docs")
    assert page.status_code == 200 and "SwaggerUIBundle" in page.text
    assert "://" not in page.text  # no CDN, no validator badge, no remote favicon
    assert '"validatorUrl": null' in page.text
    urls = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert len(urls) == 3 and all(u.startswith("/docs/assets/") for u in urls), urls
    for url in urls:
        r = client.get(url)
        assert r.status_code == 200 and len(r.content) > 500, url
    types = {u.rsplit(".", 1)[1]: client.get(u).headers["content-type"] for u in urls}
    assert types["js"].startswith("text/javascript") and types["css"].startswith("text/css")
    spec = client.get("/openapi.json")
    assert spec.status_code == 200 and spec.json()["info"]["title"] == "Lattice"


def test_only_the_listed_docs_assets_are_served(live: LiveServer) -> None:
    client = live.client()
    for name in ("index.html", "swagger-initializer.js", "..%2F..%2F__init__.py", "x"):
        r = client.get(f"/docs/assets/{name}")
        assert r.status_code == 404, name
    assert client.get("/redoc").status_code == 404  # ReDoc would need a CDN
