"""Apache Kafka 4.4.0 as a native component: one KRaft node that is both broker and controller.

The broker runs from the jars Maven Central publishes (resolved once into the shared cache with
`maven/kafka/pom.xml`) on the machine's Java 17+, with no Kafka distribution or Docker image.
Everything it writes stays in the component's data folder, and it listens on 127.0.0.1 only.

Start-up costs are paid once per cache rather than once per run: the KRaft storage is formatted
into a template that each run copies, and one training start records an AppCDS archive of the
broker's classes, which cuts every later start from ~1.35 s to ~0.75 s (and its CPU by a third).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hashlib
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import ClassVar

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.conn import create_conn
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code
from aiokafka.protocol.metadata import MetadataRequest

from simulations.components.base import Component, ComponentContext, Launch, NotReady

log = logging.getLogger(__name__)

KAFKA_VERSION = "4.4.0"
MIN_JAVA_MAJOR = 17
BROKER_MAIN = "kafka.Kafka"
STORAGE_TOOL_MAIN = "kafka.tools.StorageTool"
POM = Path(__file__).resolve().parent / "maven" / "kafka" / "pom.xml"
# Jars whose absence means the cache holds no usable broker (an interrupted or foreign download);
# versions as pinned in the pom.
REQUIRED_JARS = (
    f"kafka_2.13-{KAFKA_VERSION}.jar",
    f"kafka-server-{KAFKA_VERSION}.jar",
    f"kafka-storage-{KAFKA_VERSION}.jar",
    f"kafka-clients-{KAFKA_VERSION}.jar",
    "log4j-slf4j-impl-2.25.5.jar",
)
# A fixed cluster id (base64 of 16 bytes, as KRaft requires) keeps one formatted storage template
# valid for every run; runs never share a broker, so they need not differ.
CLUSTER_ID = "c2ltdWxhdGlvbmthZmthMQ"
NODE_ID = 1
# Fast start and a small footprint on a shared 2-core box. Measured against Kafka's own defaults
# (1 GB G1 heap, full tiered JIT): ready in 1.35 s instead of 2.9 s, 1.65 s CPU instead of 3.0 s,
# 147 MB RSS instead of 255 MB. C1 only (TieredStopAtLevel=1) alone saves 0.3 s and 1.1 s CPU;
# the C2 code it gives up only matters at loads a dev stack's Python clients never produce.
JVM_FLAGS: tuple[str, ...] = (
    "-Xms64m",
    "-Xmx384m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)
PROBE_TIMEOUT_S = 1.0
PROBE_INTERVAL_S = 0.05
TRAINING_TIMEOUT_S = 90.0
ADMIN_TIMEOUT_MS = 10_000
MAVEN_TIMEOUT_S = 900.0
FORMAT_TIMEOUT_S = 120.0
STALE_STAGING_S = 3600.0


class TrainingFailed(Exception):
    """The AppCDS training run produced no usable archive."""


def java_executable(env: Mapping[str, str]) -> Path | None:
    """The java binary to use: JAVA_HOME's when set (as Kafka's own scripts do), else PATH's."""
    java_home = env.get("JAVA_HOME")
    if java_home:
        return Path(java_home) / "bin" / "java"
    found = shutil.which("java")
    return Path(found) if found else None


def parse_java_major(version_output: str) -> int | None:
    """The major version from `java -version` output ("17.0.15" -> 17, legacy "1.8.0_392" -> 8)."""
    match = re.search(r'version "(\d+)(?:\.(\d+))?', version_output)
    if match is None:
        return None
    major = int(match.group(1))
    if major == 1 and match.group(2) is not None:
        return int(match.group(2))
    return major


def libs_dir(cache_dir: Path) -> Path:
    return cache_dir / f"kafka-{KAFKA_VERSION}" / "libs"


def missing_jars(libs: Path) -> list[str]:
    return [jar for jar in REQUIRED_JARS if not (libs / jar).is_file()]


def classpath(libs: Path) -> str:
    """Every jar, sorted: an explicit, stable order (a `libs/*` wildcard follows directory order)."""
    return os.pathsep.join(str(jar) for jar in sorted(libs.glob("*.jar")))


def parse_topics(raw: str) -> list[str]:
    """Topic names from a comma-separated setting, blanks and duplicates dropped, order kept."""
    names = (name.strip() for name in raw.split(","))
    return list(dict.fromkeys(name for name in names if name))


def parse_partitions(raw: str) -> int | None:
    """A positive partition count, or None when the setting is not one."""
    try:
        partitions = int(raw)
    except ValueError:
        return None
    return partitions if partitions >= 1 else None


def server_properties(log_dir: Path, broker_port: int, controller_port: int) -> str:
    """A single-node KRaft configuration sized for a dev box."""
    settings: dict[str, str | int] = {
        "process.roles": "broker,controller",
        "node.id": NODE_ID,
        # Static voters: formatting then does not depend on the ports, so one template fits all runs.
        "controller.quorum.voters": f"{NODE_ID}@127.0.0.1:{controller_port}",
        "listeners": f"PLAINTEXT://127.0.0.1:{broker_port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{broker_port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(log_dir),
        "auto.create.topics.enable": "true",
        "num.partitions": 3,
        "default.replication.factor": 1,
        "min.insync.replicas": 1,
        # One replica of every internal topic, and one partition each: the defaults (3 replicas,
        # 50 partitions) cannot be met by one node or cost seconds the first time a group or
        # transaction is used.
        "offsets.topic.replication.factor": 1,
        "offsets.topic.num.partitions": 1,
        "transaction.state.log.replication.factor": 1,
        "transaction.state.log.min.isr": 1,
        "transaction.state.log.num.partitions": 1,
        "share.coordinator.state.topic.replication.factor": 1,
        "share.coordinator.state.topic.min.isr": 1,
        "share.coordinator.state.topic.num.partitions": 1,
        # Consumers in tests join at once instead of waiting 3 s for more members.
        "group.initial.rebalance.delay.ms": 0,
        # Small segments and a bounded retention keep a long-running dev stack's disk use flat.
        "log.segment.bytes": 16 * 1024 * 1024,
        "log.retention.bytes": 64 * 1024 * 1024,
        "log.retention.ms": 6 * 60 * 60 * 1000,
        "log.retention.check.interval.ms": 60_000,
        # The compaction buffer is heap (128 MiB by default): too much for a 384 MiB heap.
        "log.cleaner.dedupe.buffer.size": 8 * 1024 * 1024,
        # After a crash (kill -9) the restarted controller refuses the broker's new registration
        # until the old one's session expires: 9 s by default, 3 s here. Heartbeats stay 3 per
        # session, so a JVM stalled under load is not fenced (which would take every partition
        # of this single node offline).
        "broker.heartbeat.interval.ms": 1000,
        "broker.session.timeout.ms": 3000,
        # Two cores: more threads only add context switches.
        "num.network.threads": 2,
        "num.io.threads": 2,
        "num.recovery.threads.per.data.dir": 1,
        "background.threads": 2,
    }
    return "".join(f"{key}={value}\n" for key, value in settings.items())


def log4j2_properties() -> str:
    """Log to stdout (the launcher redirects it into the component's log file) at INFO."""
    return (
        "status = warn\n"
        # Kafka logs its own shutdown from a JVM shutdown hook; log4j2's hook would close the
        # appender first and swallow those lines.
        "shutdownHook = disable\n"
        "appender.stdout.type = Console\n"
        "appender.stdout.name = STDOUT\n"
        "appender.stdout.target = SYSTEM_OUT\n"
        "appender.stdout.layout.type = PatternLayout\n"
        "appender.stdout.layout.pattern = [%d] %p %m (%c)%n\n"
        "rootLogger.level = INFO\n"
        "rootLogger.appenderRef.stdout.ref = STDOUT\n"
        # Every config class dumps all of its ~300 keys at INFO, several times per start; the
        # effective configuration is server.properties next to the log.
        "logger.config.name = org.apache.kafka.common.config.AbstractConfig\n"
        "logger.config.level = WARN\n"
    )


def make_staging(parent: Path, kind: str) -> Path:
    """A fresh folder to build into before an atomic rename, after clearing stale ones.

    A run killed mid-build leaves its staging folder behind (a training one holds ~50 MB); one
    older than STALE_STAGING_S cannot belong to a build still in progress.
    """
    parent.mkdir(parents=True, exist_ok=True)
    prefix = f".staging-{kind}-"
    for stale in parent.glob(f"{prefix}*"):
        with contextlib.suppress(OSError):
            if time.time() - stale.stat().st_mtime > STALE_STAGING_S:
                shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=parent))


def tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


class Kafka(Component):
    """Apache Kafka 4.4.0, single KRaft node (broker and controller in one JVM)."""

    name: ClassVar[str] = "kafka"
    version: ClassVar[str] = KAFKA_VERSION
    default_ports: ClassVar[Mapping[str, int]] = {"broker": 19092, "controller": 19093}
    start_timeout_s: ClassVar[float] = 60.0

    def __init__(self, ctx: ComponentContext) -> None:
        super().__init__(ctx)
        self.libs = libs_dir(ctx.cache_dir)
        self.properties_file = ctx.data_dir / "server.properties"
        self.log4j_file = ctx.data_dir / "log4j2.properties"
        self.log_dir = ctx.data_dir / "logs"
        self.template_dir = ctx.cache_dir / f"kafka-{KAFKA_VERSION}" / f"storage-{CLUSTER_ID}-{NODE_ID}"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.ctx.port('broker')}"

    # -- preflight ---------------------------------------------------------------------------

    def preflight(self) -> None:
        self.check_java()
        if missing_jars(self.libs):
            self.resolve_jars()
        if missing := missing_jars(self.libs):
            raise self.error(
                f"Kafka jars missing from {self.libs} after resolving: {', '.join(missing)}",
                f"delete {self.libs} and retry, or check {POM}",
            )

    def java(self) -> Path:
        java = java_executable(os.environ)
        if java is None:
            raise self.error(
                "Java not found (no JAVA_HOME, no java on PATH)",
                "install OpenJDK 17+ (apt-get install openjdk-17-jre-headless) or set JAVA_HOME",
            )
        if not os.access(java, os.X_OK):
            raise self.error(
                f"{java} is not an executable java (from JAVA_HOME={os.environ.get('JAVA_HOME')})",
                "point JAVA_HOME at a JDK/JRE 17+ or unset it to use java from PATH",
            )
        return java

    def check_java(self) -> None:
        java = self.java()
        try:
            result = subprocess.run([str(java), "-version"], capture_output=True, text=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise self.error(f"`{java} -version` failed: {exc}", "reinstall OpenJDK 17+ or fix JAVA_HOME") from exc
        # `java -version` prints on stderr.
        output = result.stderr + result.stdout
        major = parse_java_major(output)
        if major is None:
            raise self.error(
                f"cannot read the Java version from `{java} -version`: {tail(output, 3)!r}",
                "install OpenJDK 17+ (apt-get install openjdk-17-jre-headless) or set JAVA_HOME",
            )
        if major < MIN_JAVA_MAJOR:
            raise self.error(
                f"Kafka {KAFKA_VERSION} needs Java {MIN_JAVA_MAJOR}+, {java} is Java {major}",
                "install OpenJDK 17+ (apt-get install openjdk-17-jre-headless) and set JAVA_HOME to it",
            )

    def resolve_jars(self) -> None:
        """Download the broker's jars with Maven into the cache (once per cache)."""
        mvn = shutil.which("mvn")
        if mvn is None:
            raise self.error(
                f"Kafka jars are not in {self.libs} and Maven (mvn) is not installed to fetch them",
                f"apt-get install maven (needs Maven Central), or copy the jars of {POM} into {self.libs}",
            )
        # Resolve into a fresh folder and rename it into place: an interrupted download never
        # leaves a half-filled libs folder that later runs would trust.
        staging = make_staging(self.libs.parent, "libs")
        try:
            argv = [
                mvn,
                "-q",
                "-B",
                "-f",
                str(POM),
                "dependency:copy-dependencies",
                f"-DoutputDirectory={staging}",
            ]
            try:
                result = subprocess.run(argv, capture_output=True, text=True, timeout=MAVEN_TIMEOUT_S, check=False)
            except subprocess.TimeoutExpired as exc:
                raise self.error(
                    f"Maven did not resolve the Kafka jars within {MAVEN_TIMEOUT_S:.0f} s",
                    "check access to Maven Central (repo.maven.apache.org) and retry",
                ) from exc
            if result.returncode != 0:
                raise self.error(
                    f"Maven could not resolve the Kafka jars: {tail(result.stdout + result.stderr)}",
                    "check access to Maven Central (repo.maven.apache.org) and ~/.m2/settings.xml",
                )
            shutil.rmtree(self.libs, ignore_errors=True)
            try:
                staging.rename(self.libs)
            except OSError:
                # Another run resolved the same jars meanwhile; theirs are as good as ours.
                if missing_jars(self.libs):
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    # -- prepare -----------------------------------------------------------------------------

    async def prepare(self) -> None:
        self.ctx.data_dir.mkdir(parents=True, exist_ok=True)
        self.properties_file.write_text(
            server_properties(self.log_dir, self.ctx.port("broker"), self.ctx.port("controller"))
        )
        self.log4j_file.write_text(log4j2_properties())
        if not (self.log_dir / "meta.properties").is_file():
            await self.ensure_storage_template()
            shutil.rmtree(self.log_dir, ignore_errors=True)
            shutil.copytree(self.template_dir, self.log_dir)
        if not self.cds_archive().is_file():
            await self.train_cds_archive()

    async def ensure_storage_template(self) -> None:
        """Format KRaft storage once per cache: a JVM start (~0.7 s) traded for a folder copy."""
        if (self.template_dir / "meta.properties").is_file():
            return
        staging = make_staging(self.template_dir.parent, "storage")
        try:
            storage = staging / "logs"
            properties = staging / "server.properties"
            # The ports only matter to a running broker; formatting records neither of them.
            properties.write_text(server_properties(storage, self.ctx.port("broker"), self.ctx.port("controller")))
            log4j = staging / "log4j2.properties"
            log4j.write_text(log4j2_properties())
            await self.run_storage_tool(properties, log4j)
            try:
                storage.rename(self.template_dir)
            except OSError:
                # A concurrent run formatted the template first; use theirs.
                if not (self.template_dir / "meta.properties").is_file():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    async def run_storage_tool(self, properties: Path, log4j: Path) -> None:
        argv = [
            str(self.java()),
            *JVM_FLAGS,
            f"-Dlog4j2.configurationFile={log4j}",
            "-cp",
            classpath(self.libs),
            STORAGE_TOOL_MAIN,
            "format",
            "--cluster-id",
            CLUSTER_ID,
            "--config",
            str(properties),
        ]
        process = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        try:
            output, _ = await asyncio.wait_for(process.communicate(), FORMAT_TIMEOUT_S)
        except TimeoutError as exc:
            process.kill()
            await process.wait()
            raise self.error(
                f"formatting KRaft storage took over {FORMAT_TIMEOUT_S:.0f} s",
                "check the machine's load and retry",
            ) from exc
        if process.returncode != 0:
            raise self.error(
                f"formatting KRaft storage failed: {tail(output.decode(errors='replace'))}",
                f"delete {self.template_dir.parent / 'storage-*'} and retry",
            )

    # -- AppCDS archive ------------------------------------------------------------------------

    def cds_archive(self) -> Path:
        jars = sorted(self.libs.glob("*.jar"))
        key = cds_key(self.java(), jars, JVM_FLAGS)
        return self.ctx.cache_dir / f"kafka-{KAFKA_VERSION}" / "cds" / f"broker-{key}.jsa"

    async def train_cds_archive(self) -> None:
        """Start a throwaway broker until ready, stop it, and keep the classes it loaded.

        Costs one start and a slower stop (3-4.5 s) once per cache. A failure only costs speed,
        so it is logged, not raised. Java 17 dumps the archive at exit into the file named; a
        truncated archive crashes every JVM that maps it (SIGBUS, even with -Xshare:auto), so the
        archive is written to a staging folder, test-loaded, and only then renamed into place.
        """
        archive = self.cds_archive()
        staging = make_staging(archive.parent, "training")
        try:
            candidate = staging / archive.name
            await self.run_training_broker(staging, candidate)
            await self.check_archive_loads(candidate, staging)
            candidate.rename(archive)
            prune_other_archives(archive)
        except TrainingFailed as exc:
            log.warning("kafka: no AppCDS archive, the broker will start slower: %s", exc)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    async def run_training_broker(self, staging: Path, candidate: Path) -> None:
        properties = self.stage_training_storage(staging)
        argv = self.broker_argv(properties, self.log4j_file, [f"-XX:ArchiveClassesAtExit={candidate}"])
        output = staging / "training.log"
        with output.open("wb") as sink:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdout=sink,
                stderr=asyncio.subprocess.STDOUT,
                cwd=staging,
                preexec_fn=terminate_with_parent,
            )
        try:
            await self.wait_until_serving(process)
        finally:
            await stop_process(process, TRAINING_TIMEOUT_S)
        check_archive_written(candidate, output, process.returncode)

    def stage_training_storage(self, staging: Path) -> Path:
        """A throwaway copy of the storage template and a config for it; returns the config."""
        shutil.copytree(self.template_dir, staging / "logs")
        properties = staging / "server.properties"
        # The run's own ports: nothing listens on them until launch.
        properties.write_text(server_properties(staging / "logs", self.ctx.port("broker"), self.ctx.port("controller")))
        return properties

    async def wait_until_serving(self, process: asyncio.subprocess.Process) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TRAINING_TIMEOUT_S
        while True:
            try:
                await probe_broker(self.ctx.port("broker"))
                return
            except NotReady as exc:
                if process.returncode is not None:
                    raise TrainingFailed(f"the training broker exited with {process.returncode}") from exc
                if loop.time() > deadline:
                    raise TrainingFailed(f"the training broker was not ready in {TRAINING_TIMEOUT_S:.0f} s") from exc
            await asyncio.sleep(PROBE_INTERVAL_S)

    async def check_archive_loads(self, candidate: Path, staging: Path) -> None:
        # -Xshare:on makes any mapping problem fatal; -version then exits at once.
        process = await asyncio.create_subprocess_exec(
            str(self.java()),
            *JVM_FLAGS,
            "-Xshare:on",
            f"-XX:SharedArchiveFile={candidate}",
            "-cp",
            classpath(self.libs),
            "-version",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            cwd=staging,  # where a crashing JVM leaves its hs_err file, removed with staging
        )
        _, stderr = await process.communicate()
        if process.returncode != 0:
            raise TrainingFailed(f"the archive does not load: {tail(stderr.decode(errors='replace'), 3)}")

    # -- launch, probe, provision ------------------------------------------------------------

    def launch(self) -> Launch:
        archive = self.cds_archive()
        # Without an archive (training failed or was never run) the broker simply starts slower.
        cds = [f"-XX:SharedArchiveFile={archive}"] if archive.is_file() else []
        return Launch(argv=self.broker_argv(self.properties_file, self.log4j_file, cds), cwd=self.ctx.data_dir)

    def broker_argv(self, properties: Path, log4j: Path, extra_jvm_flags: Sequence[str]) -> list[str]:
        return [
            str(self.java()),
            *JVM_FLAGS,
            *extra_jvm_flags,
            f"-Dlog4j2.configurationFile={log4j}",
            "-cp",
            classpath(self.libs),
            BROKER_MAIN,
            str(properties),
        ]

    async def probe(self) -> None:
        await probe_broker(self.ctx.port("broker"))

    async def provision(self) -> None:
        topics = parse_topics(self.ctx.settings.get("topics", ""))
        if not topics:
            return
        partitions = parse_partitions(self.ctx.settings.get("partitions", "3"))
        if partitions is None:
            raise self.error(
                f"setting partitions={self.ctx.settings.get('partitions')!r} is not a positive integer",
                "set partitions to a whole number of at least 1 (default 3)",
            )
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=ADMIN_TIMEOUT_MS)
        try:
            await admin.start()
            response = await admin.create_topics(
                [NewTopic(name, num_partitions=partitions, replication_factor=1) for name in topics]
            )
        except KafkaError as exc:
            raise self.error(
                f"could not create topics {', '.join(topics)}: {exc!r}",
                f"check the broker log in {self.ctx.data_dir}",
            ) from exc
        finally:
            await admin.close()
        # Topics that already exist (a restarted broker, or auto-created by an early producer) are
        # what we wanted; any other per-topic error is not.
        failures = [
            f"{topic}: {for_code(code).__name__}"
            for topic, code, *_ in response.topic_errors
            if code != 0 and for_code(code) is not TopicAlreadyExistsError
        ]
        if failures:
            raise self.error(
                f"could not create topics: {'; '.join(failures)}",
                f"check the broker log in {self.ctx.data_dir}",
            )

    def endpoints(self) -> dict[str, str]:
        return {"bootstrap": self.bootstrap}


async def probe_broker(port: int) -> None:
    """Ready once the broker answers Metadata and lists itself as a live (unfenced) broker.

    A bare connection (ApiVersions + Metadata) rather than a client: no background metadata task
    to cancel, and no error logged by aiokafka for each refused attempt while the JVM starts.
    """
    bootstrap = f"127.0.0.1:{port}"
    try:
        conn = await asyncio.wait_for(
            create_conn("127.0.0.1", port, request_timeout_ms=int(PROBE_TIMEOUT_S * 1000)),
            PROBE_TIMEOUT_S,
        )
    except (OSError, KafkaError, TimeoutError) as exc:
        raise NotReady(f"no Kafka broker answers on {bootstrap}: {exc!r}") from exc
    try:
        metadata = await conn.send(MetadataRequest([]))
    except (OSError, KafkaError, TimeoutError) as exc:
        raise NotReady(f"Kafka on {bootstrap} did not answer Metadata: {exc!r}") from exc
    finally:
        await conn.close()
    if not live_broker_on(metadata.brokers, port):
        raise NotReady(f"Kafka on {bootstrap} has not registered itself as a live broker yet")


def live_broker_on(brokers: Sequence[tuple[object, ...]], port: int) -> bool:
    """Whether Metadata's broker list (node_id, host, port, ...) holds a broker on this port."""
    return any(len(broker) > 2 and broker[2] == port for broker in brokers)


def cds_key(java: Path, jars: Sequence[Path], flags: Sequence[str]) -> str:
    """What an AppCDS archive is only valid for: this JVM build, these exact jars, these flags.

    The JVM itself rejects a stale archive (and starts slowly); keying the file name on the same
    facts makes a changed JDK or jar set train a new archive instead.
    """
    java = java.resolve()
    libjvm = java.parent.parent / "lib" / "server" / "libjvm.so"
    digest = hashlib.sha256()
    for path in (java, libjvm, *jars):
        if path.exists():
            stat = path.stat()
            digest.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    digest.update("\0".join(flags).encode())
    return digest.hexdigest()[:16]


def check_archive_written(candidate: Path, output: Path, returncode: int | None) -> None:
    if not candidate.is_file():
        raise TrainingFailed(
            f"the training broker wrote no archive (exit {returncode}): {tail(output.read_text(errors='replace'), 5)}"
        )


def prune_other_archives(archive: Path) -> None:
    """Drop archives of an older JDK or jar set (~50 MB each); a JVM still mapping one is unaffected."""
    for other in archive.parent.glob("broker-*.jsa"):
        if other != archive:
            other.unlink(missing_ok=True)


def terminate_with_parent() -> None:
    """In the child before exec: SIGTERM it if we die, so no orphan broker keeps the run's ports."""
    if sys.platform == "linux":
        pr_set_pdeathsig = 1  # from <sys/prctl.h>
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


async def stop_process(process: asyncio.subprocess.Process, timeout_s: float) -> None:
    """SIGTERM, then SIGKILL if the process outlives the timeout."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
    try:
        await asyncio.wait_for(process.wait(), timeout_s)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
