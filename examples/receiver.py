"""Keep a JSON index of thumbnails up to date from thumbwatch's events (Python standard library only).

    python3 examples/receiver.py 8080 /srv/photos/thumbnails.json
    # thumbwatch.yaml:  hooks: {webhook: {url: "http://127.0.0.1:8080/"}}

The index maps each thumbnail's path to {"photo", "size", "width", "height", "bytes"}. Events come
at least once and in order, so applying one again is harmless. Port 0 picks a free port (printed).
"""
import json, os, sys
from http.server import BaseHTTPRequestHandler, HTTPServer

port, index_file = int(sys.argv[1]), sys.argv[2]
index = json.load(open(index_file)) if os.path.exists(index_file) else {}


def apply(e):
    if e["event"] == "rendered":
        for t in e["thumbnails"]:
            index[t["path"]] = {"photo": e["photo"], **{k: t[k] for k in ("size", "width", "height", "bytes")}}
    elif e["event"] in ("removed", "failed"):
        for path in e.get("thumbnails") or e.get("removed") or []:
            index.pop(path, None)
    elif e["event"] == "moved":
        for t in e["thumbnails"]:
            for path in [p for p in index if p.startswith(t["from"] + "/")]:
                entry = index.pop(path)
                entry["photo"] = e["to"] + entry["photo"][len(e["from"]):]
                index[t["to"] + path[len(t["from"]):]] = entry


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        for e in json.loads(self.rfile.read(int(self.headers["Content-Length"])))["events"]:
            apply(e)
        with open(index_file + ".tmp", "w") as f:
            json.dump(index, f, indent=1, sort_keys=True)
        os.replace(index_file + ".tmp", index_file)  # readers never see half an index
        self.send_response(204)
        self.end_headers()


server = HTTPServer(("127.0.0.1", port), Handler)
print("listening on", server.server_port, flush=True)
server.serve_forever()
