"""The API's documentation pages (/docs, /redoc). FastAPI's own load the latest Swagger UI 5.x and
ReDoc 2.x from a CDN, plus a favicon and fonts from third parties: scripts that can change under
us, on pages an admin opens with their key at hand. Ours pin each script's version and its
Subresource Integrity hash (a changed file is not run), and load nothing else from outside.
To upgrade: `npm pack swagger-ui-dist@X redoc@Y`, then `openssl dgst -sha384 -binary FILE | base64`."""
from __future__ import annotations

from html import escape

from fastapi import FastAPI
from fastapi.responses import HTMLResponse

CDN = "https://cdn.jsdelivr.net/npm"
SWAGGER_JS = (f"{CDN}/swagger-ui-dist@5.35.0/swagger-ui-bundle.js",
              "sha384-gjRm0bEPMeTmMh5jT2cHccIwCUZSTd8YC+j0d0sXw0MdGEfScduGpSyF3ZSSLkX9")
SWAGGER_CSS = (f"{CDN}/swagger-ui-dist@5.35.0/swagger-ui.css",
               "sha384-WlYgdmXYOOBWL5apwjDEZwN+U3HmXSSu5R6V5aGxEcf7z+KuRNwBhoxKVN1i3D5I")
REDOC_JS = (f"{CDN}/redoc@2.5.4/bundles/redoc.standalone.js",
            "sha384-w447zOpYfw/1Tv/5AK9NfHTlQIqE3RVR6KY62jCyy9zNDgO64cMwGGP1Fj0zJVf5")


def swagger_page(title: str, openapi_url: str) -> str:
    (js, js_hash), (css, css_hash) = SWAGGER_JS, SWAGGER_CSS
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1.0">
<title>{escape(title)}</title>
<link rel="stylesheet" href="{css}" integrity="{css_hash}" crossorigin="anonymous">
</head><body><div id="swagger-ui"></div>
<script src="{js}" integrity="{js_hash}" crossorigin="anonymous"></script>
<script>SwaggerUIBundle({{url: "{escape(openapi_url)}", dom_id: "#swagger-ui", deepLinking: true,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset], layout: "BaseLayout"}})</script>
</body></html>"""


def redoc_page(title: str, openapi_url: str) -> str:
    js, js_hash = REDOC_JS
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title><style>body {{margin: 0; padding: 0;}}</style>
</head><body><redoc spec-url="{escape(openapi_url)}"></redoc>
<script src="{js}" integrity="{js_hash}" crossorigin="anonymous"></script>
</body></html>"""


def add_docs_pages(app: FastAPI) -> None:
    """/docs and /redoc for an app made with docs_url=None and redoc_url=None."""
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get("/docs", include_in_schema=False)
    async def swagger() -> HTMLResponse:
        return HTMLResponse(swagger_page(f"{app.title} - API", openapi_url))

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return HTMLResponse(redoc_page(f"{app.title} - API", openapi_url))
