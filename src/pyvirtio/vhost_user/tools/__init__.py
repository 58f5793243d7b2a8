"""Programs that test other vhost-user implementations (``pyvirtio proxy``, ``pyvirtio fuzz``,
``pyvirtio fuzz-frontend``).

* ``proxy`` / ``proxy_server`` — a recording, mutating proxy between a front-end and a back-end;
* ``fuzz`` / ``fuzz_runner`` — a stateful fuzzer of any back-end, with replayable cases;
* ``hostile`` / ``hostile_runner`` — a back-end that lies to front-ends as rules say.
"""
