package dev.custos.fhirclient;

import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.rest.api.EncodingEnum;
import ca.uhn.fhir.rest.api.SearchTotalModeEnum;
import ca.uhn.fhir.rest.client.api.IGenericClient;
import ca.uhn.fhir.rest.client.interceptor.BearerTokenAuthInterceptor;
import ca.uhn.fhir.rest.server.exceptions.AuthenticationException;
import ca.uhn.fhir.rest.server.exceptions.BaseServerResponseException;
import ca.uhn.fhir.rest.server.exceptions.ResourceNotFoundException;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import org.hl7.fhir.instance.model.api.IBaseOperationOutcome;
import org.hl7.fhir.r4.model.AuditEvent;
import org.hl7.fhir.r4.model.Bundle;
import org.hl7.fhir.r4.model.CapabilityStatement;
import org.hl7.fhir.r4.model.CapabilityStatement.CapabilityStatementRestComponent;
import org.hl7.fhir.r4.model.CapabilityStatement.CapabilityStatementRestResourceComponent;
import org.hl7.fhir.r4.model.CapabilityStatement.CapabilityStatementRestResourceSearchParamComponent;
import org.hl7.fhir.r4.model.CapabilityStatement.ResourceInteractionComponent;
import org.hl7.fhir.r4.model.CodeType;
import org.hl7.fhir.r4.model.OperationOutcome;

/**
 * Exercises the Custos FHIR endpoint the way a FHIR client does, with HAPI FHIR's generic
 * client: reads the CapabilityStatement (also validated by HAPI itself before the first
 * request), searches AuditEvent with a bearer token and {@code _total=accurate}, follows the
 * {@code next} links, reads an entry by its {@code fullUrl}, and checks the OperationOutcomes
 * of an unknown id and of a request without a token.
 *
 * <p>Usage: {@code --base URL [--count N] [--param name=value]...}; the bearer token comes
 * from the environment variable {@code CUSTOS_FHIR_TOKEN}. Prints a JSON summary on stdout
 * and exits 1 when any check failed.
 */
public final class Main {
  private final List<String> failures = new ArrayList<>();

  private Main() {}

  public static void main(String[] args) {
    String base = null;
    int count = 10;
    Map<String, List<String>> params = new LinkedHashMap<>();
    for (int i = 0; i < args.length; i++) {
      String a = args[i];
      String v = i + 1 < args.length ? args[i + 1] : null;
      if (v == null) {
        usage("missing value for " + a);
      }
      switch (a) {
        case "--base" -> base = v;
        case "--count" -> count = Integer.parseInt(v);
        case "--param" -> {
          int eq = v.indexOf('=');
          if (eq <= 0) {
            usage("--param takes name=value");
          }
          params.computeIfAbsent(v.substring(0, eq), k -> new ArrayList<>()).add(v.substring(eq + 1));
        }
        default -> usage("unknown argument " + a);
      }
      i++;
    }
    String token = System.getenv("CUSTOS_FHIR_TOKEN");
    if (base == null || token == null || token.isEmpty()) {
      usage("--base and CUSTOS_FHIR_TOKEN are required");
    }
    Main m = new Main();
    Map<String, Object> summary = new LinkedHashMap<>();
    try {
      m.run(base, token, count, params, summary);
    } catch (RuntimeException e) {
      m.fail("unexpected " + e.getClass().getSimpleName() + ": " + e.getMessage());
    }
    summary.put("failures", m.failures);
    summary.put("ok", m.failures.isEmpty());
    System.out.println(Json.write(summary));
    System.exit(m.failures.isEmpty() ? 0 : 1);
  }

  private static void usage(String why) {
    System.err.println("custos-fhir-client: " + why);
    System.err.println("usage: --base URL [--count N] [--param name=value]... (token in CUSTOS_FHIR_TOKEN)");
    System.exit(2);
  }

  private void fail(String what) {
    failures.add(what);
  }

  private void check(boolean ok, String what) {
    if (!ok) {
      fail(what);
    }
  }

  private void run(
      String base,
      String token,
      int count,
      Map<String, List<String>> params,
      Map<String, Object> summary) {
    FhirContext ctx = FhirContext.forR4();
    // Default server validation mode (ONCE): HAPI reads /metadata before the first request
    // and refuses a server whose fhirVersion does not match R4.
    IGenericClient client = ctx.newRestfulGenericClient(base);
    client.setEncoding(EncodingEnum.JSON);
    client.registerInterceptor(new BearerTokenAuthInterceptor(token));

    summary.put("metadata", metadata(client));
    summary.put("search", search(client, count, params));
    @SuppressWarnings("unchecked")
    List<String> fullUrls = (List<String>) ((Map<String, Object>) summary.get("search")).remove("full_urls");
    summary.put("read", read(client, fullUrls));
    summary.put("not_found", notFound(client));
    summary.put("unauthenticated", unauthenticated(ctx, base));
  }

  private Map<String, Object> metadata(IGenericClient client) {
    Map<String, Object> out = new LinkedHashMap<>();
    CapabilityStatement cs = client.capabilities().ofType(CapabilityStatement.class).execute();
    out.put("fhir_version", cs.getFhirVersion() == null ? null : cs.getFhirVersion().toCode());
    out.put("kind", cs.getKind() == null ? null : cs.getKind().toCode());
    List<String> formats = new ArrayList<>();
    for (CodeType f : cs.getFormat()) {
      formats.add(f.getValue());
    }
    out.put("formats", formats);
    check("4.0.1".equals(out.get("fhir_version")), "metadata: fhirVersion is not 4.0.1");
    check("instance".equals(out.get("kind")), "metadata: kind is not instance");
    check(formats.contains("json") || formats.contains("application/fhir+json"), "metadata: json not among the formats");
    List<String> interactions = new ArrayList<>();
    List<String> searchParams = new ArrayList<>();
    List<String> security = new ArrayList<>();
    boolean found = false;
    for (CapabilityStatementRestComponent rest : cs.getRest()) {
      if (rest.hasSecurity()) {
        rest.getSecurity().getService().forEach(s -> s.getCoding().forEach(c -> security.add(c.getCode())));
      }
      for (CapabilityStatementRestResourceComponent r : rest.getResource()) {
        if (!"AuditEvent".equals(r.getType())) {
          continue;
        }
        found = true;
        for (ResourceInteractionComponent i : r.getInteraction()) {
          interactions.add(i.getCode().toCode());
        }
        for (CapabilityStatementRestResourceSearchParamComponent p : r.getSearchParam()) {
          searchParams.add(p.getName() + ":" + (p.getType() == null ? "" : p.getType().toCode()));
        }
      }
    }
    check(found, "metadata: no AuditEvent resource");
    check(interactions.contains("read"), "metadata: AuditEvent lacks read");
    check(interactions.contains("search-type"), "metadata: AuditEvent lacks search-type");
    out.put("interactions", interactions);
    out.put("search_params", searchParams);
    out.put("security_services", security);
    return out;
  }

  private Map<String, Object> search(IGenericClient client, int count, Map<String, List<String>> params) {
    Map<String, Object> out = new LinkedHashMap<>();
    Bundle page = client
        .search()
        .forResource(AuditEvent.class)
        .whereMap(params)
        .count(count)
        .totalMode(SearchTotalModeEnum.ACCURATE)
        .returnBundle(Bundle.class)
        .execute();
    Integer total = page.hasTotal() ? page.getTotal() : null;
    Set<String> ids = new LinkedHashSet<>();
    List<String> fullUrls = new ArrayList<>();
    List<Integer> sizes = new ArrayList<>();
    int duplicates = 0;
    while (true) {
      check(page.getType() == Bundle.BundleType.SEARCHSET, "search: bundle type is not searchset");
      sizes.add(page.getEntry().size());
      check(page.getEntry().size() <= count, "search: a page holds more than _count entries");
      for (Bundle.BundleEntryComponent e : page.getEntry()) {
        if (!(e.getResource() instanceof AuditEvent ev)) {
          fail("search: an entry is not an AuditEvent");
          continue;
        }
        String id = ev.getIdElement().getIdPart();
        if (!ids.add(id)) {
          duplicates++;
        }
        fullUrls.add(e.getFullUrl());
        check(e.getFullUrl() != null && e.getFullUrl().endsWith("/AuditEvent/" + id), "search: fullUrl does not name the entry");
      }
      if (page.getLink(Bundle.LINK_NEXT) == null) {
        break;
      }
      if (sizes.size() > 1000) {
        fail("search: more than 1000 pages");
        break;
      }
      page = client.loadPage().next(page).execute();
    }
    check(duplicates == 0, "search: an entry appeared on two pages");
    check(total != null, "search: no total with _total=accurate");
    check(total == null || total == ids.size(), "search: total differs from the entries returned");
    out.put("total", total);
    out.put("pages", sizes.size());
    out.put("page_sizes", sizes);
    out.put("entries", ids.size());
    out.put("duplicates", duplicates);
    out.put("ids", new ArrayList<>(ids));
    out.put("full_urls", fullUrls);
    return out;
  }

  private Map<String, Object> read(IGenericClient client, List<String> fullUrls) {
    Map<String, Object> out = new LinkedHashMap<>();
    if (fullUrls.isEmpty()) {
      fail("read: the search returned nothing to read");
      return out;
    }
    String url = fullUrls.get(fullUrls.size() - 1);
    AuditEvent ev = client.read().resource(AuditEvent.class).withUrl(url).execute();
    String id = ev.getIdElement().getIdPart();
    out.put("url", url);
    out.put("id", id);
    out.put("action", ev.getAction() == null ? null : ev.getAction().toCode());
    out.put("recorded", ev.hasRecorded() ? ev.getRecordedElement().getValueAsString() : null);
    check(url.endsWith("/AuditEvent/" + id), "read: the resource id differs from its fullUrl");
    return out;
  }

  private Map<String, Object> notFound(IGenericClient client) {
    Map<String, Object> out = new LinkedHashMap<>();
    try {
      client.read().resource(AuditEvent.class).withId("00000000000000000000000000000000").execute();
      fail("not_found: reading an unknown id succeeded");
    } catch (ResourceNotFoundException e) {
      out.put("status", e.getStatusCode());
      out.put("issue_code", issueCode(e.getOperationOutcome()));
    } catch (BaseServerResponseException e) {
      out.put("status", e.getStatusCode());
      fail("not_found: status " + e.getStatusCode() + " instead of 404");
    }
    check("not-found".equals(out.get("issue_code")), "not_found: no OperationOutcome with code not-found");
    return out;
  }

  private Map<String, Object> unauthenticated(FhirContext ctx, String base) {
    Map<String, Object> out = new LinkedHashMap<>();
    IGenericClient anon = ctx.newRestfulGenericClient(base);
    anon.setEncoding(EncodingEnum.JSON);
    try {
      anon.search().forResource(AuditEvent.class).returnBundle(Bundle.class).execute();
      fail("unauthenticated: a search without a token succeeded");
    } catch (AuthenticationException e) {
      out.put("status", e.getStatusCode());
      out.put("issue_code", issueCode(e.getOperationOutcome()));
    } catch (BaseServerResponseException e) {
      out.put("status", e.getStatusCode());
      fail("unauthenticated: status " + e.getStatusCode() + " instead of 401");
    }
    check("login".equals(out.get("issue_code")), "unauthenticated: no OperationOutcome with code login");
    return out;
  }

  private static String issueCode(IBaseOperationOutcome oo) {
    if (oo instanceof OperationOutcome o && o.hasIssue() && o.getIssueFirstRep().hasCode()) {
      return o.getIssueFirstRep().getCode().toCode();
    }
    return null;
  }

  /** A minimal JSON writer for the summary (maps, lists, strings, numbers, booleans). */
  static final class Json {
    private Json() {}

    static String write(Object v) {
      StringBuilder sb = new StringBuilder();
      write(sb, v);
      return sb.toString();
    }

    private static void write(StringBuilder sb, Object v) {
      if (v == null) {
        sb.append("null");
      } else if (v instanceof Map<?, ?> m) {
        sb.append('{');
        boolean first = true;
        for (Map.Entry<?, ?> e : m.entrySet()) {
          if (!first) {
            sb.append(',');
          }
          first = false;
          string(sb, String.valueOf(e.getKey()));
          sb.append(':');
          write(sb, e.getValue());
        }
        sb.append('}');
      } else if (v instanceof Iterable<?> it) {
        sb.append('[');
        boolean first = true;
        for (Object o : it) {
          if (!first) {
            sb.append(',');
          }
          first = false;
          write(sb, o);
        }
        sb.append(']');
      } else if (v instanceof Number || v instanceof Boolean) {
        sb.append(v);
      } else {
        string(sb, v.toString());
      }
    }

    private static void string(StringBuilder sb, String s) {
      sb.append('"');
      for (char c : s.toCharArray()) {
        switch (c) {
          case '"' -> sb.append("\\\"");
          case '\\' -> sb.append("\\\\");
          case '\n' -> sb.append("\\n");
          case '\r' -> sb.append("\\r");
          case '\t' -> sb.append("\\t");
          default -> {
            if (c < 0x20) {
              sb.append(String.format("\\u%04x", (int) c));
            } else {
              sb.append(c);
            }
          }
        }
      }
      sb.append('"');
    }
  }
}
