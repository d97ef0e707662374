import sys, json, httpx
url, token, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
h = {"authorization": f"Bearer {token}", "content-type": "application/json", "accept": "application/json, text/event-stream"}
with httpx.Client(timeout=60) as c:
    r = c.post(url, headers=h, json={"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"cg","version":"1"}}})
    sid = r.headers["mcp-session-id"]
    h2 = dict(h, **{"mcp-session-id": sid, "mcp-protocol-version": "2025-11-25"})
    c.post(url, headers=h2, json={"jsonrpc":"2.0","method":"notifications/initialized"})
    for i in range(n):
        r = c.post(url, headers=h2, json={"jsonrpc":"2.0","id":i+1,"method":"tools/call","params":{"name":"fx__echo","arguments":{"text":"hi"}}})
        assert r.status_code == 200, r.text
print("ok")
