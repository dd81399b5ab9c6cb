"""The storage resource: where collections, tables and GeoTIFFs live (a folder or an S3 prefix).

Shared by the resources (:mod:`rasteret_pipelines.defs.resources`) and the IO managers
(:mod:`rasteret_pipelines.defs.io_managers`), which is why it has a module of its own.

One :class:`StorageResource` with two backends chosen by the base path
(:func:`storage_resource`): :class:`LocalStorageResource` for a folder,
:class:`S3StorageResource` for ``s3://bucket/prefix``. Both hand out a
:class:`rasteret_pipelines.storage.Storage`, whose writes are atomic: a temporary name renamed
into place on local disk, whole objects on S3. S3 is configured the standard AWS way (see
:func:`rasteret_pipelines.storage.s3_options`), the same configuration the library and the COG
reader use, so the Dagster layer has no second S3 configuration to keep in step.
"""

import os

import dagster as dg
from pydantic import Field

from rasteret_pipelines.defs.settings import DEFAULT_STORAGE
from rasteret_pipelines.errors import StorageConfigError
from rasteret_pipelines.storage import Storage


class StorageResource(dg.ConfigurableResource):
    """The storage location of collections, GeoTIFFs and tables (a folder or an S3 prefix).

    Use :func:`storage_resource` to get the backend matching a base path:
    :class:`LocalStorageResource` or :class:`S3StorageResource`. Writes go through
    :class:`rasteret_pipelines.storage.Storage`: atomic renames on local disk, whole-object
    uploads on S3 (an object only appears once complete).
    """

    base_path: str = Field(default=DEFAULT_STORAGE, description="Folder or s3://bucket/prefix")

    def storage(self) -> Storage:
        return Storage.from_uri(self.base_path)

    def uri(self, *parts: str) -> str:
        """User-facing location (local path or ``s3://`` URI) of ``parts`` below the base."""
        return self.storage().uri_of(*parts)

    def check(self) -> None:
        """Fail early, with a message naming the fault, when the location cannot be used."""

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        # runs check (and create) the location; a sensor tick does not (the field sensor writes
        # its snapshot there only once the field file is usable, and starting `dagster dev`
        # must leave no folder behind)
        if getattr(context, "run", None) is not None:
            self.check()


class LocalStorageResource(StorageResource):
    """A local folder (created on first use, with a ``.gitignore`` so it never gets committed)."""

    def check(self) -> None:
        if self.base_path.startswith("s3://"):
            raise StorageConfigError(f"{self.base_path} is an S3 location: use S3StorageResource")
        path = os.path.abspath(os.path.expanduser(self.base_path.removeprefix("file://")))
        fresh = not os.path.exists(path)
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as exc:
            raise StorageConfigError(f"storage folder {path} cannot be created: {exc}") from exc
        if not os.access(path, os.W_OK):
            raise StorageConfigError(f"storage folder {path} is not writable")
        if fresh:
            with open(os.path.join(path, ".gitignore"), "w") as fh:
                fh.write("# written by rasteret-pipelines: pipeline data, never committed\n*\n")


class S3StorageResource(StorageResource):
    """An ``s3://bucket/prefix`` location, reached through the standard AWS configuration.

    Credentials come from botocore's chain (environment, ``AWS_PROFILE`` and ``~/.aws``, SSO,
    container or instance roles); ``AWS_REGION`` and ``AWS_ENDPOINT_URL_S3`` (an S3-compatible
    server such as MinIO) are honoured.
    """

    def check(self) -> None:
        if not self.base_path.startswith("s3://") or len(self.base_path) <= 5:
            raise StorageConfigError(f"{self.base_path!r} is not an s3://bucket/prefix location")
        bucket = self.base_path[5:].split("/", 1)[0]
        import botocore.session
        from botocore.exceptions import BotoCoreError

        if botocore.session.get_session().get_credentials() is None:
            raise StorageConfigError(
                f"no AWS credentials found for {self.base_path}: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or run with an IAM role "
                "(the standard AWS credential chain found nothing)"
            )
        store = self.storage()
        try:
            found = store.fs.exists(bucket)
        except (OSError, BotoCoreError) as exc:
            raise StorageConfigError(f"cannot access bucket {bucket!r} of {self.base_path}: {exc}") from exc
        if not found:
            endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
            raise StorageConfigError(
                f"bucket {bucket!r} of {self.base_path} does not exist" + (f" at {endpoint}" if endpoint else "")
            )


def storage_resource(base_path: str | dg.EnvVar, resolved: str | None = None) -> StorageResource:
    """The storage backend for a base path: S3 for ``s3://...``, local otherwise.

    Args:
        base_path: The path, or an :class:`EnvVar` holding it.
        resolved: The path's value when ``base_path`` is an :class:`EnvVar` (picks the class).
    """
    value = resolved if resolved is not None else str(base_path)
    cls = S3StorageResource if value.startswith("s3://") else LocalStorageResource
    return cls(base_path=base_path)
