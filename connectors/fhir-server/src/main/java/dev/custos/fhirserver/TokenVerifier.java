package dev.custos.fhirserver;

import com.nimbusds.jose.JOSEException;
import com.nimbusds.jose.JWSAlgorithm;
import com.nimbusds.jose.jwk.source.JWKSource;
import com.nimbusds.jose.jwk.source.JWKSourceBuilder;
import com.nimbusds.jose.proc.BadJOSEException;
import com.nimbusds.jose.proc.JWSVerificationKeySelector;
import com.nimbusds.jose.proc.SecurityContext;
import com.nimbusds.jwt.JWTClaimsSet;
import com.nimbusds.jwt.SignedJWT;
import com.nimbusds.jwt.proc.DefaultJWTClaimsVerifier;
import com.nimbusds.jwt.proc.DefaultJWTProcessor;
import java.io.IOException;
import java.net.MalformedURLException;
import java.net.URI;
import java.net.URLEncoder;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.text.ParseException;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Base64;
import java.util.HashSet;
import java.util.HexFormat;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * Validates SMART bearer tokens: signature against the issuer's JWKS, issuer, expiry (and the
 * audience when configured), then asks the issuer's introspection endpoint whether the token is
 * still active, so a revoked token is refused at once. Introspection answers are reused for a
 * few seconds at most.
 */
public final class TokenVerifier {
    private static final Logger LOG = LoggerFactory.getLogger(TokenVerifier.class);
    private static final int MAX_CACHE_ENTRIES = 10_000;

    /** Why a token was refused. */
    public static final class TokenRejected extends Exception {
        private static final long serialVersionUID = 1L;
        private final transient Caller caller;

        TokenRejected(String reason, Caller caller) {
            super(reason);
            this.caller = caller;
        }

        /** The caller the token names when its signature verified, else an anonymous one. */
        public Caller caller() {
            return caller;
        }
    }

    private record Answer(boolean active, long expiresAtMillis) {}

    private final ServerConfig config;
    private final DefaultJWTProcessor<SecurityContext> processor;
    private final HttpClient http;
    private final Map<String, Answer> introspected = new ConcurrentHashMap<>();

    /**
     * Builds the verifier; keys are fetched lazily and cached by nimbus (refetched on an unknown
     * key id).
     *
     * @param config the server settings
     * @throws MalformedURLException when the JWKS URL is not a URL
     */
    public TokenVerifier(ServerConfig config) throws MalformedURLException {
        this.config = config;
        JWKSource<SecurityContext> keys = JWKSourceBuilder.create(config.jwksUrl().toURL())
                .retrying(true)
                .build();
        processor = new DefaultJWTProcessor<>();
        processor.setJWSKeySelector(new JWSVerificationKeySelector<>(
                Set.of(JWSAlgorithm.RS256, JWSAlgorithm.PS256, JWSAlgorithm.ES256), keys));
        processor.setJWTClaimsSetVerifier(new DefaultJWTClaimsVerifier<>(
                config.audience().orElse(null),
                new JWTClaimsSet.Builder().issuer(config.issuer()).build(),
                Set.of("sub", "exp", "iat")));
        http = HttpClient.newBuilder().connectTimeout(Duration.ofSeconds(3)).build();
    }

    /**
     * Verifies {@code token}.
     *
     * @param token the compact JWT from the {@code Authorization} header
     * @return the verified caller
     * @throws TokenRejected when the token is malformed, badly signed, expired, for another
     *     issuer or audience, or not active at the issuer (revoked, logged out)
     */
    public Caller verify(String token) throws TokenRejected {
        JWTClaimsSet claims;
        try {
            claims = processor.process(token, null);
        } catch (ParseException e) {
            throw new TokenRejected("malformed token", Caller.anonymous(config.issuer()));
        } catch (BadJOSEException e) {
            throw new TokenRejected("token not valid: " + e.getMessage(), unverifiedCaller(token));
        } catch (JOSEException e) {
            throw new TokenRejected("token could not be verified", Caller.anonymous(config.issuer()));
        }
        Caller caller = callerOf(claims, true);
        if (!active(token, claims)) {
            throw new TokenRejected("token is not active (revoked or logged out)", caller.refused());
        }
        return caller;
    }

    /**
     * The caller named by a token whose signature verifies but that failed another check
     * (expired, wrong audience); anonymous when even the signature fails.
     */
    private Caller unverifiedCaller(String token) {
        try {
            SignedJWT jwt = SignedJWT.parse(token);
            // Only trust the claims when the signature is good; the claims check is what failed.
            DefaultJWTProcessor<SecurityContext> sigOnly = new DefaultJWTProcessor<>();
            sigOnly.setJWSKeySelector(processor.getJWSKeySelector());
            sigOnly.setJWTClaimsSetVerifier((c, ctx) -> { });
            JWTClaimsSet claims = sigOnly.process(jwt, null);
            if (!config.issuer().equals(claims.getIssuer())) {
                return Caller.anonymous(config.issuer());
            }
            return callerOf(claims, false);
        } catch (ParseException | BadJOSEException | JOSEException e) {
            return Caller.anonymous(config.issuer());
        }
    }

    private boolean active(String token, JWTClaimsSet claims) throws TokenRejected {
        String key = digest(token);
        long now = System.currentTimeMillis();
        Answer cached = introspected.get(key);
        if (cached != null && cached.expiresAtMillis() > now) {
            return cached.active();
        }
        boolean active = introspect(token, claims);
        if (introspected.size() >= MAX_CACHE_ENTRIES) {
            introspected.entrySet().removeIf(e -> e.getValue().expiresAtMillis() <= now);
            if (introspected.size() >= MAX_CACHE_ENTRIES) {
                introspected.clear();
            }
        }
        if (!config.introspectionCacheTtl().isZero()) {
            introspected.put(key, new Answer(active, now + config.introspectionCacheTtl().toMillis()));
        }
        return active;
    }

    private boolean introspect(String token, JWTClaimsSet claims) throws TokenRejected {
        String form = "token=" + URLEncoder.encode(token, StandardCharsets.UTF_8)
                + "&token_type_hint=access_token";
        String basic = Base64.getEncoder().encodeToString(
                (enc(config.introspectionClientId()) + ":" + enc(config.introspectionClientSecret()))
                        .getBytes(StandardCharsets.UTF_8));
        HttpRequest req = HttpRequest.newBuilder(config.introspectionUrl())
                .timeout(Duration.ofSeconds(5))
                .header("Content-Type", "application/x-www-form-urlencoded")
                .header("Accept", "application/json")
                .header("Authorization", "Basic " + basic)
                .POST(HttpRequest.BodyPublishers.ofString(form))
                .build();
        try {
            HttpResponse<String> resp = http.send(req, HttpResponse.BodyHandlers.ofString());
            if (resp.statusCode() != 200) {
                LOG.warn("introspection answered HTTP {}; refusing the token", resp.statusCode());
                throw new TokenRejected("token introspection failed", callerOf(claims, false));
            }
            Object active = com.nimbusds.jose.util.JSONObjectUtils.parse(resp.body()).get("active");
            return Boolean.TRUE.equals(active);
        } catch (IOException | ParseException e) {
            LOG.warn("introspection unavailable ({}); refusing the token", e.getClass().getSimpleName());
            throw new TokenRejected("token introspection unavailable", callerOf(claims, false));
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new TokenRejected("interrupted", callerOf(claims, false));
        }
    }

    private static String enc(String v) {
        return URLEncoder.encode(v, StandardCharsets.UTF_8);
    }

    private Caller callerOf(JWTClaimsSet c, boolean verified) {
        String client = firstString(c, "azp", "client_id").orElse("unknown");
        List<String> scopes = firstString(c, "scope")
                .map(s -> Arrays.stream(s.trim().split("\\s+")).filter(x -> !x.isEmpty()).toList())
                .orElse(List.of());
        List<String> purposes = new ArrayList<>();
        Object pou = c.getClaim("purpose_of_use");
        if (pou instanceof String s) {
            purposes.addAll(Arrays.asList(s.trim().split("\\s+")));
        } else if (pou instanceof List<?> l) {
            l.forEach(x -> purposes.add(String.valueOf(x)));
        }
        purposes.removeIf(String::isBlank);
        return new Caller(
                Optional.ofNullable(c.getIssuer()).orElse(config.issuer()),
                Optional.ofNullable(c.getSubject()).orElse("anonymous"),
                client,
                Optional.ofNullable(c.getJWTID()),
                firstString(c, "sid"),
                firstString(c, "fhirUser"),
                firstString(c, "patient"),
                List.copyOf(new HashSet<>(scopes).stream().sorted().toList()),
                List.copyOf(purposes),
                verified);
    }

    private static Optional<String> firstString(JWTClaimsSet c, String... names) {
        for (String n : names) {
            Object v = c.getClaim(n);
            if (v instanceof String s && !s.isBlank()) {
                return Optional.of(s);
            }
        }
        return Optional.empty();
    }

    private static String digest(String token) {
        try {
            MessageDigest md = MessageDigest.getInstance("SHA-256");
            return HexFormat.of().formatHex(md.digest(token.getBytes(StandardCharsets.UTF_8)));
        } catch (NoSuchAlgorithmException e) {
            throw new IllegalStateException("SHA-256 missing", e);
        }
    }
}
