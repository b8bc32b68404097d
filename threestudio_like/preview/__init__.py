"""Previewing exported assets: ``preview.html`` pages with an interactive 3D viewer (:mod:`.page`),
``--serve`` to open them over HTTP (:mod:`.serve`), the Khronos glTF validator (:mod:`.validate`),
and the pinned npm packages both need (:mod:`.assets`)."""
