"""Running the service on an engine that scales it: Ray Serve (``deploy.ray_serve``), and
the container and platform manifests beside this package (see ``deploy/README.md``)."""
