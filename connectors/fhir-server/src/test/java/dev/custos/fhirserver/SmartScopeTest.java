package dev.custos.fhirserver;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.List;
import java.util.Optional;
import org.junit.jupiter.api.Test;

class SmartScopeTest {

    @Test
    void v2_permissions_are_read_letter_by_letter() {
        SmartScope s = SmartScope.parse("patient/Observation.rs").orElseThrow();
        assertEquals(new SmartScope("patient", "Observation", true, true, false, false, false), s);
        assertTrue(s.patientContext());
        SmartScope all = SmartScope.parse("user/*.cruds").orElseThrow();
        assertEquals(new SmartScope("user", "*", true, true, true, true, true), all);
        assertTrue(all.anyType());
        assertEquals(new SmartScope("system", "Patient", false, true, false, false, false),
                SmartScope.parse("system/Patient.s").orElseThrow());
    }

    @Test
    void v1_forms_map_to_v2_permissions() {
        assertEquals(new SmartScope("patient", "*", true, true, false, false, false),
                SmartScope.parse("patient/*.read").orElseThrow());
        assertEquals(new SmartScope("user", "Observation", false, false, true, true, true),
                SmartScope.parse("user/Observation.write").orElseThrow());
        assertEquals(new SmartScope("system", "*", true, true, true, true, true),
                SmartScope.parse("system/*.*").orElseThrow());
    }

    @Test
    void other_and_malformed_scopes_grant_nothing() {
        for (String s : List.of("openid", "fhirUser", "launch/patient", "offline_access", "patient/Observation.sr",
                "patient/Observation.rs?category=laboratory", "patient/observation.rs", "doctor/Patient.rs",
                "patient/Patient.", "patient/Patient.x", "patient/Patient.r*", "user/../Patient.rs")) {
            assertEquals(Optional.empty(), SmartScope.parse(s), s);
        }
        assertEquals(1, SmartScope.parseAll(List.of("openid", "patient/Patient.r", "launch/patient")).size());
    }
}
