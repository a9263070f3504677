"""The page at ``GET /``: a prompt box, then schnell and schnell + head side by side (no external assets).

The page is open; the API behind it is not: the page asks for the API key (kept in the browser's
localStorage) and sends it as ``Authorization: Bearer <key>`` with each request. An empty seed asks for a
random one; the seed used is shown."""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>facelift: schnell vs schnell + head</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font-family:system-ui,sans-serif;margin:2rem;max-width:64rem}
form{display:flex;gap:.5rem;flex-wrap:wrap}
#prompt{flex:1;min-width:20rem;padding:.4rem}
#seed{width:9rem;padding:.4rem}
#key{width:14rem;padding:.4rem}
.pair{display:flex;gap:1rem;margin-top:1.5rem}
figure{margin:0;flex:1}
img{width:100%;max-width:512px;image-rendering:auto;background:#eee;min-height:4rem}
#status{margin-top:1rem;color:#555}
#status.error{color:#b00}
</style></head>
<body>
<h1>facelift</h1>
<p>FLUX.1-schnell, then a trained head that makes it look like FLUX.1-dev at a fraction of the cost.</p>
<form id="form">
  <input id="prompt" name="prompt" required maxlength="1000"
         value="A professional portrait of Ada Lovelace" aria-label="prompt">
  <input id="seed" name="seed" type="number" min="0" placeholder="random seed" aria-label="seed">
  <input id="key" name="key" type="password" placeholder="API key" autocomplete="off" aria-label="API key">
  <button id="go" type="submit">Generate</button>
</form>
<div id="status" role="status"></div>
<div class="pair">
  <figure><img id="schnell" alt="schnell"><figcaption>schnell</figcaption></figure>
  <figure><img id="enhanced" alt="schnell + head"><figcaption>schnell + head</figcaption></figure>
</div>
<script>
const form = document.getElementById("form"), status = document.getElementById("status");
const key = document.getElementById("key");
key.value = localStorage.getItem("facelift-api-key") || "";
form.addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const body = {prompt: document.getElementById("prompt").value};
  const seed = document.getElementById("seed").value;
  if (seed !== "") { body.seed = parseInt(seed, 10); }
  localStorage.setItem("facelift-api-key", key.value);
  const headers = {"Content-Type": "application/json"};
  if (key.value) { headers["Authorization"] = "Bearer " + key.value; }
  status.className = ""; status.textContent = "generating...";
  document.getElementById("go").disabled = true;
  try {
    const res = await fetch("/compare", {method: "POST", headers: headers, body: JSON.stringify(body)});
    const text = await res.text();
    let data;
    try { data = JSON.parse(text); } catch (e) { throw new Error(`${res.status}: ${text.slice(0, 200)}`); }
    if (!res.ok) { throw new Error(data.error || JSON.stringify(data.detail || data)); }
    document.getElementById("schnell").src = data.schnell;
    document.getElementById("enhanced").src = data.enhanced;
    status.textContent = `seed ${data.seed}: schnell ${data.seconds.schnell_s.toFixed(3)} s + head ` +
                         `${data.seconds.head_s.toFixed(4)} s per image (batch of ${data.batch})`;
  } catch (err) {
    status.className = "error"; status.textContent = "error: " + err.message;
  } finally {
    document.getElementById("go").disabled = false;
  }
});
</script>
</body></html>
"""
