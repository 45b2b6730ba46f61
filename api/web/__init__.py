"""The web pages the server serves itself: static HTML, JS and vendored chart code (``static/``).

Nothing on the pages comes from elsewhere (an air-gapped cluster has no CDN): uPlot and
Swagger UI are vendored under ``static/vendor/`` with their licences and a SOURCE note. The
pages read the API with the user's own credentials, so they show what the API shows them.
"""
