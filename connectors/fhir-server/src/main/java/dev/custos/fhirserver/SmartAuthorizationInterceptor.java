package dev.custos.fhirserver;

import ca.uhn.fhir.rest.api.RestOperationTypeEnum;
import ca.uhn.fhir.rest.api.server.RequestDetails;
import ca.uhn.fhir.rest.server.interceptor.auth.AuthorizationInterceptor;
import ca.uhn.fhir.rest.server.interceptor.auth.IAuthRule;
import ca.uhn.fhir.rest.server.interceptor.auth.IAuthRuleBuilder;
import ca.uhn.fhir.rest.server.interceptor.auth.IAuthRuleBuilderRuleOp;
import ca.uhn.fhir.rest.server.interceptor.auth.IAuthRuleBuilderRuleOpClassifier;
import ca.uhn.fhir.rest.server.interceptor.auth.IAuthRuleFinished;
import ca.uhn.fhir.rest.server.interceptor.auth.RuleBuilder;
import java.util.List;
import java.util.Optional;
import java.util.Set;
import org.hl7.fhir.r4.model.IdType;

/**
 * HAPI's {@link AuthorizationInterceptor} with rules built per request from the caller's SMART
 * scopes and launch patient: {@code patient/} scopes reach the patient's compartment only,
 * {@code user/} and {@code system/} scopes any instance of their type. Reads need {@code r},
 * searches {@code s}, creates {@code c}, updates {@code u}, deletes {@code d}. Everything else is
 * denied (403 OperationOutcome); the capability statement is open.
 */
public final class SmartAuthorizationInterceptor extends AuthorizationInterceptor {

    private static final Set<RestOperationTypeEnum> SEARCHES = Set.of(
            RestOperationTypeEnum.SEARCH_TYPE, RestOperationTypeEnum.SEARCH_SYSTEM, RestOperationTypeEnum.GET_PAGE);

    @Override
    public List<IAuthRule> buildRuleList(RequestDetails request) {
        IAuthRuleBuilder rules = new RuleBuilder();
        rules.allow("capabilities").metadata().andThen();
        Object data = request.getUserData().get(Caller.USER_DATA_KEY);
        if (!(data instanceof Caller caller) || !caller.verified()) {
            return rules.denyAll("no verified caller").build();
        }
        boolean searching = SEARCHES.contains(request.getRestOperationType());
        Optional<IdType> patient = caller.patient().map(p -> new IdType("Patient", p));
        for (SmartScope scope : SmartScope.parseAll(caller.scopes())) {
            if (scope.patientContext() && patient.isEmpty()) {
                continue; // a patient scope without a launch patient grants nothing
            }
            String name = scope.context() + "/" + scope.resourceType();
            if (searching ? scope.search() : scope.read()) {
                restrict(scope, patient, rules.allow(name).read()).andThen();
            }
            if (scope.create() || scope.update()) {
                restrict(scope, patient, rules.allow(name).write()).andThen();
            }
            if (scope.delete()) {
                restrict(scope, patient, rules.allow(name).delete()).andThen();
            }
        }
        return rules.denyAll("outside the granted SMART scopes").build();
    }

    private static IAuthRuleFinished restrict(SmartScope scope, Optional<IdType> patient, IAuthRuleBuilderRuleOp op) {
        IAuthRuleBuilderRuleOpClassifier classifier =
                scope.anyType() ? op.allResources() : op.resourcesOfType(scope.resourceType());
        if (scope.patientContext()) {
            return classifier.inCompartment("Patient", patient.orElseThrow());
        }
        return classifier.withAnyId();
    }
}
