package dev.custos.fhirserver;

import ca.uhn.fhir.context.FhirContext;
import jakarta.servlet.http.HttpServlet;
import jakarta.servlet.http.HttpServletRequest;
import jakarta.servlet.http.HttpServletResponse;
import java.io.IOException;
import java.io.Serial;
import java.util.Map;
import java.util.TreeMap;
import org.eclipse.jetty.ee10.servlet.ServletContextHandler;
import org.eclipse.jetty.ee10.servlet.ServletHolder;
import org.eclipse.jetty.server.Server;
import org.eclipse.jetty.server.ServerConnector;
import org.eclipse.jetty.util.thread.QueuedThreadPool;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/** Starts the server: FHIR at {@code /fhir}, health and audit counters at {@code /healthz}. */
public final class Main {
    private static final Logger LOG = LoggerFactory.getLogger(Main.class);

    private Main() {}

    /** The entry point; exits 2 on bad configuration, 1 when the server cannot start. */
    public static void main(String[] args) {
        ServerConfig config;
        try {
            config = ServerConfig.fromEnv(System.getenv());
        } catch (ServerConfig.ConfigException e) {
            System.err.println("custos-fhir-server: " + e.getMessage());
            System.exit(2);
            return;
        }
        try {
            run(config);
        } catch (Exception e) {
            LOG.error("custos-fhir-server failed to start: {}", e.toString());
            System.exit(1);
        }
    }

    private static void run(ServerConfig config) throws Exception {
        FhirContext fhir = FhirContext.forR4Cached();
        FeedSink sink = new FeedSink(config, fhir);
        TokenVerifier verifier = new TokenVerifier(config);
        QueuedThreadPool pool = new QueuedThreadPool(32, 4);
        pool.setName("fhir-http");
        Server server = new Server(pool);
        ServerConnector connector = new ServerConnector(server);
        connector.setHost(config.bindHost());
        connector.setPort(config.port());
        server.addConnector(connector);
        ServletContextHandler context = new ServletContextHandler();
        context.setContextPath("/");
        ServletHolder fhirServlet = new ServletHolder(new FhirServer(fhir, config, verifier, sink));
        fhirServlet.setInitOrder(1);
        context.addServlet(fhirServlet, "/fhir/*");
        context.addServlet(new ServletHolder(new Health(sink)), "/healthz");
        server.setHandler(context);
        server.setStopAtShutdown(true);
        Runtime.getRuntime().addShutdownHook(new Thread(sink::close, "custos-audit-flush"));
        server.start();
        LOG.info("custos-fhir-server listening on http://{}:{}/fhir (issuer {}, feed {})", config.bindHost(),
                config.port(), config.issuer(), config.feedUrl().map(Object::toString).orElse("not configured"));
        server.join();
    }

    /** {@code GET /healthz}: 200 with the audit counters as JSON. */
    static final class Health extends HttpServlet {
        @Serial
        private static final long serialVersionUID = 1L;
        private final transient FeedSink sink;

        Health(FeedSink sink) {
            this.sink = sink;
        }

        @Override
        protected void doGet(HttpServletRequest req, HttpServletResponse resp) throws IOException {
            StringBuilder out = new StringBuilder("{\"status\":\"ok\",\"audit\":{");
            Map<String, Long> stats = new TreeMap<>(sink.stats());
            boolean first = true;
            for (Map.Entry<String, Long> e : stats.entrySet()) {
                out.append(first ? "" : ",").append('"').append(e.getKey()).append("\":").append(e.getValue());
                first = false;
            }
            out.append("}}");
            resp.setContentType("application/json");
            resp.getWriter().write(out.toString());
        }
    }
}
