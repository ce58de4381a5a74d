"""Calls the server with the official `openai` Python package, as other programs do: lists the
models, generates in both response formats, decodes every image, and reads the errors the
package raises for a bad request and (when the server has one) a wrong API key.

Usage: openai_client.py BASE_URL API_KEY
Prints one JSON line of what it saw; exits non-zero on any failure.
"""

import base64
import json
import struct
import sys
import urllib.request
import zlib

import openai


def png_size(data):
    """(width, height) of a PNG, after checking its signature and that its IDAT inflates."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    pos, idat = 8, b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"IDAT":
            idat += data[pos + 8:pos + 8 + length]
        pos += 12 + length
    raw = zlib.decompress(idat)
    assert len(raw) == height * (1 + width * 3), "pixel data does not match the header"
    return width, height


def main():
    base, key = sys.argv[1], sys.argv[2]
    client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=300)
    seen = {"models": [m.id for m in client.models.list().data]}

    result = client.images.generate(model="anything", prompt="red apple", n=2, size="1024x1024",
                                    response_format="b64_json", extra_body={"seed": 11})
    seen["b64_sizes"] = [png_size(base64.b64decode(d.b64_json)) for d in result.data]
    seen["seed"] = result.model_extra.get("seed")

    result = client.images.generate(prompt="fire", response_format="url", extra_body={"seed": 12, "cfg": 2.5})
    urls = [d.url for d in result.data]
    with urllib.request.urlopen(urls[0]) as r:
        seen["url_size"] = png_size(r.read())
        seen["url_type"] = r.headers["Content-Type"]

    try:
        client.images.generate(prompt="red apple", size="wide")
        seen["bad_size"] = "accepted"
    except openai.BadRequestError as e:
        seen["bad_size"] = [e.status_code, e.body.get("param") if isinstance(e.body, dict) else None]

    if key != "unused":
        wrong = openai.OpenAI(base_url=base + "/v1", api_key="wrong-" + key, max_retries=0)
        try:
            wrong.images.generate(prompt="red apple")
            seen["wrong_key"] = "accepted"
        except openai.AuthenticationError as e:
            seen["wrong_key"] = e.status_code
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
