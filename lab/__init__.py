"""The laboratory: tooling that runs, measures and attacks the servers.

Never imported by the runtime (project, apps, deploy), never in the image.
"""
