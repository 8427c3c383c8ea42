// Search from file://. Browsers refuse to start a Web Worker from a file, and Material's search runs in one.
// Opened from a file, this page gives `Worker` a stand-in that runs the worker's script in a hidden iframe: the
// script's `postMessage` reaches the page as a "message" event, the page's `postMessage` the script's listener.
// (Material's offline plugin loads such a shim from a CDN unless mkdocs.yml names one under extra.polyfills, as here.)
(function () {
  "use strict";
  if (location.protocol !== "file:") return;
  window.Worker = function FrameWorker(url) {
    var worker = new EventTarget(), queue = [], ready = false;
    var frame = document.createElement("iframe");
    frame.hidden = true;
    document.body.appendChild(frame);
    var w = frame.contentWindow;
    var deliver = function (data) { w.dispatchEvent(new w.MessageEvent("message", {data: data})); };
    w.postMessage = function (data) {
      setTimeout(function () { worker.dispatchEvent(new MessageEvent("message", {data: data})); });
    };
    var script = w.document.createElement("script");
    script.src = new URL(url, location.href).href;
    script.onload = function () { ready = true; queue.splice(0).forEach(deliver); };
    script.onerror = function () { worker.dispatchEvent(new Event("error")); };
    w.document.head.appendChild(script);
    worker.postMessage = function (data) { if (ready) deliver(data); else queue.push(data); };
    worker.terminate = function () { frame.remove(); };
    return worker;
  };
})();
